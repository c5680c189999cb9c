"""Writing a prediction where photo tools read it: XMP sidecars (`photo.jpg.xmp`, the name digiKam
and darktable use by default) and EXIF GPS in a copy of the photo (or the original, if asked).

Both go through pyexiv2 (Exiv2, the library digiKam itself uses), imported only when needed.
Rules, after digiKam/darktable: never touch an original unless asked; never replace GPS someone
else wrote unless forced; merge into an existing sidecar rather than replace it, keeping every
property we do not set; every write atomic.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from geolocsft.export import ExportError, atomic_write_bytes
from geolocsft.store import PhotoResult
from geolocsft.textsafe import xml_text

# Our own XMP namespace: marks GPS as a model estimate (not a receiver fix) and lets a rerun
# recognise and update what it wrote before.
GEOLOCSFT_NS = "https://geolocsft.github.io/ns/1.0/"
GEOLOCSFT_PREFIX = "geolocsft"

_EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"></rdf:RDF>'
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>'
).encode("utf-8")

_ns_lock = threading.Lock()
_ns_registered = False


def _pyexiv2():
    global _ns_registered
    try:
        import pyexiv2
    except ImportError as exc:
        raise ExportError("pyexiv2 is not installed (pip install 'geolocsft[app]')") from exc
    with _ns_lock:
        if not _ns_registered:
            pyexiv2.set_log_level(4)  # Exiv2 warnings about odd files go nowhere, not to stderr
            try:
                pyexiv2.registerNs(GEOLOCSFT_NS, GEOLOCSFT_PREFIX)
            except Exception:  # already registered in this process by another import path
                pass
            _ns_registered = True
    return pyexiv2


def xmp_coordinate(value: float, positive: str, negative: str) -> str:
    """XMP's GPSCoordinate form "DDD,MM.mmmmmmk" (XMP spec part 2, exif schema)."""
    hemisphere = positive if value >= 0 else negative
    # Integer millionths of a minute, so 59.9999999' carries into the next degree.
    ticks = round(abs(value) * 60 * 1_000_000)
    degrees, micro_minutes = divmod(ticks, 60 * 1_000_000)
    return f"{degrees},{micro_minutes // 1_000_000}.{micro_minutes % 1_000_000:06d}{hemisphere}"


def parse_xmp_coordinate(text: str) -> float:
    """Inverse of xmp_coordinate; also reads the "DDD,MM,SSk" form."""
    text = text.strip()
    hemisphere = text[-1].upper()
    parts = [float(p) for p in text[:-1].split(",")]
    value = parts[0] + (parts[1] / 60.0 if len(parts) > 1 else 0.0)
    value += parts[2] / 3600.0 if len(parts) > 2 else 0.0
    return -value if hemisphere in "SW" else value


def sidecar_path(photo: str | Path) -> Path:
    photo = Path(photo)
    return photo.with_name(photo.name + ".xmp")


@dataclass
class TagOutcome:
    path: Path  # the file written or skipped
    action: str  # "created", "merged", "updated", "skipped", "error"
    message: str = ""


def _xmp_fields(result: PhotoResult) -> dict[str, str]:
    fields = {
        "Xmp.exif.GPSVersionID": "2.0.0.0",
        "Xmp.exif.GPSMapDatum": "WGS-84",
        "Xmp.exif.GPSLatitude": xmp_coordinate(result.latitude, "N", "S"),
        "Xmp.exif.GPSLongitude": xmp_coordinate(result.longitude, "E", "W"),
        f"Xmp.{GEOLOCSFT_PREFIX}.Estimated": "True",
        f"Xmp.{GEOLOCSFT_PREFIX}.Model": result.model_name or result.model_sha256[:16],
        f"Xmp.{GEOLOCSFT_PREFIX}.ModelSha256": result.model_sha256,
        f"Xmp.{GEOLOCSFT_PREFIX}.PromptVersion": result.prompt_version,
    }
    if result.radius_km is not None:
        fields[f"Xmp.{GEOLOCSFT_PREFIX}.RadiusKm"] = f"{result.radius_km:.1f}"
    return fields


def _place_fields(result: PhotoResult) -> dict[str, str]:
    fields = {}
    if result.place_city:
        fields["Xmp.photoshop.City"] = result.place_city
    if result.place_state:
        fields["Xmp.photoshop.State"] = result.place_state
    if result.place_country and result.place_country_code:  # not "(sea)"
        fields["Xmp.photoshop.Country"] = result.place_country
        fields["Xmp.iptc.CountryCode"] = result.place_country_code
    return fields


def _xml_safe(fields: dict[str, str]) -> dict[str, str]:
    # A model's name or a place name with a control character would make the packet invalid XML.
    return {k: xml_text(v) for k, v in fields.items()}


def write_sidecar(photo: str | Path, result: PhotoResult, *, force: bool = False) -> TagOutcome:
    """Write or merge `photo.ext.xmp`. An existing sidecar keeps all its other properties; GPS or
    place fields written by someone else are kept unless force (then replaced)."""
    target = sidecar_path(photo)
    if not result.has_point:
        return TagOutcome(target, "skipped", "no predicted point")
    pyexiv2 = _pyexiv2()
    ours = _xml_safe({**_xmp_fields(result), **_place_fields(result)})
    action = "created"
    if target.exists():
        try:
            packet = target.read_bytes()
            data = pyexiv2.ImageData(packet)
            existing = data.read_xmp()
        except (OSError, RuntimeError) as exc:
            return TagOutcome(target, "skipped", f"existing sidecar is unreadable ({exc}); left as is")
        written_by_us = f"Xmp.{GEOLOCSFT_PREFIX}.Model" in existing
        if "Xmp.exif.GPSLatitude" in existing and not written_by_us and not force:
            return TagOutcome(target, "skipped", "sidecar already has GPS; use --force to replace it")
        if not written_by_us and not force:
            # Keep place names a person typed in; only fill the empty ones.
            ours = {k: v for k, v in ours.items() if k not in existing}
        action = "updated" if written_by_us else "merged"
    else:
        data = pyexiv2.ImageData(_EMPTY_PACKET)
    try:
        # Exiv2 mirrors a sidecar's exif:GPS* into an in-memory Exif copy when reading and
        # writes that copy back over the XMP on save, undoing our change; the sidecar's real
        # data is its XMP, so drop the derived copy first.
        data.clear_exif()
        data.modify_xmp(ours)
        payload = data.get_bytes()
    except RuntimeError as exc:
        return TagOutcome(target, "error", f"Exiv2 could not write XMP ({exc})")
    finally:
        data.close()
    try:
        atomic_write_bytes(target, payload, force=True)
    except ExportError as exc:
        return TagOutcome(target, "error", str(exc))
    return TagOutcome(target, action)


def _exif_rational(value: float) -> str:
    """Degrees as EXIF's three rationals "d/1 m/1 s/10000" (1e-4 arc-second steps, ~3 mm)."""
    ticks = round(abs(value) * 3600 * 10000)
    degrees, ticks = divmod(ticks, 3600 * 10000)
    minutes, ticks = divmod(ticks, 60 * 10000)
    return f"{degrees}/1 {minutes}/1 {ticks}/10000"


# GPSProcessingMethod says how the position was found: ours is a model estimate, and a rerun
# recognises (and may update) GPS it wrote itself.
EXIF_PROCESSING_METHOD = "geolocsft model estimate"


def exif_gps_fields(lat: float, lon: float) -> dict[str, str]:
    return {
        "Exif.GPSInfo.GPSVersionID": "2 3 0 0",
        "Exif.GPSInfo.GPSProcessingMethod": f"charset=Ascii {EXIF_PROCESSING_METHOD}",
        "Exif.GPSInfo.GPSMapDatum": "WGS-84",
        "Exif.GPSInfo.GPSLatitudeRef": "N" if lat >= 0 else "S",
        "Exif.GPSInfo.GPSLatitude": _exif_rational(lat),
        "Exif.GPSInfo.GPSLongitudeRef": "E" if lon >= 0 else "W",
        "Exif.GPSInfo.GPSLongitude": _exif_rational(lon),
    }


def written_by_geolocsft(path: str | Path) -> bool:
    """True for a copy an earlier run made (so a rerun may refresh it)."""
    pyexiv2 = _pyexiv2()
    path = Path(path)
    try:
        data = pyexiv2.ImageData(path.read_bytes())
        try:
            method = str(data.read_exif().get("Exif.GPSInfo.GPSProcessingMethod", ""))
        finally:
            data.close()
    except (OSError, RuntimeError):
        return False
    return EXIF_PROCESSING_METHOD in method


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_exif_gps(
    source: str | Path, target: str | Path, result: PhotoResult, *, force: bool = False,
    replace_target: bool | None = None, in_place: bool | None = None,
) -> TagOutcome:
    """Write the predicted GPS into `target`: a copy of `source`, or `source` itself with
    in_place (--in-place; None: the two are given as the same path). A target that is the
    source photo under another name (a symlink, a hard link, the photo folder as --out) is
    refused unless in_place: the original is never written by accident. In place, the photo
    keeps its mode, owner and extended attributes, and a symlinked photo is written through to
    the file it points at (the link stays a link). A photo that already carries GPS (its own,
    real fix) keeps it unless force; GPS geolocsft wrote before is updated. Another file already
    at `target` is replaced only with replace_target (default: force)."""
    source, target = Path(source), Path(target)
    if not result.has_point:
        return TagOutcome(target, "skipped", "no predicted point")
    if in_place is None:
        in_place = os.path.abspath(source) == os.path.abspath(target)
    if in_place:
        target = Path(os.path.realpath(source))  # through a symlink, to the photo itself
    elif _same_file(source, target):
        return TagOutcome(target, "error", f"is the source photo {source} itself; not writing "
                                           "into an original without --in-place")
    pyexiv2 = _pyexiv2()
    replace_target = force if replace_target is None else replace_target
    if (target.exists() and not in_place and not replace_target
            and not written_by_geolocsft(target)):
        return TagOutcome(target, "skipped", "a file is already there; use --force to replace it")
    try:
        data = pyexiv2.ImageData(source.read_bytes())
    except (OSError, RuntimeError) as exc:
        return TagOutcome(target, "error", f"{source}: Exiv2 cannot read it ({exc})")
    try:
        existing = data.read_exif()
        ours = EXIF_PROCESSING_METHOD in str(existing.get("Exif.GPSInfo.GPSProcessingMethod", ""))
        if "Exif.GPSInfo.GPSLatitude" in existing and not ours and not force:
            return TagOutcome(target, "skipped", "photo already has EXIF GPS; use --force to replace it")
        data.modify_exif(exif_gps_fields(result.latitude, result.longitude))
        payload = data.get_bytes()
    except RuntimeError as exc:
        return TagOutcome(target, "error", f"{source}: Exiv2 cannot write EXIF to this format ({exc})")
    finally:
        data.close()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, payload, force=True, like=target if in_place else None)
    except (ExportError, OSError) as exc:
        return TagOutcome(target, "error", str(exc))
    return TagOutcome(target, "updated" if in_place else "created")
