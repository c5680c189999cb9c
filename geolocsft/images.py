"""Image preparation: the one way a photo becomes model input, shared by captioning, training
and inference (if they differed, a fine-tune would silently lose much of what it learnt).

`prepare_image(source, budget)` = `open_image` (decode, EXIF orientation, RGB, bomb guard)
+ `fit_to_budget` (the model family's pixel budget). Resampling is BICUBIC, so the same file
and budget always give the same pixels. `read_gps` reads ground truth from EXIF.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageOps

from geolocsft import families
from geolocsft.fsutil import not_a_regular_file

# Pillow warns on odd files ("Corrupt EXIF data", "Truncated File Read", "Metadata Warning",
# palette transparency...) straight to the terminal, once per photo of a seized folder. The
# pixels are what matter: a file that cannot be decoded becomes its one-line ImageError; the
# rest are noise. (The pixel cap is ours, so Pillow's bomb warning is redundant too.)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Pixel cap for decoding (the decompression-bomb guard). 200 MP lets 200 MP phone photos
# through; anything larger is almost always a crafted or broken file.
DEFAULT_MAX_IMAGE_PIXELS = 200_000_000

RESAMPLE = Image.Resampling.BICUBIC


class ImageError(ValueError):
    """A photo that cannot be used; `str()` is "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = os.fspath(path) if path is not None else "<image>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# Which budget fields each resize rule uses (geolocsft.families.ImageRule).
_RULE_FIELDS = {"smart": ("max_pixels", "min_pixels", "factor"), "square": ("fixed_side",),
                "fit": ("max_pixels", "factor")}


@dataclass(frozen=True)
class ImageBudget:
    """How many pixels a model family sees. `family` is a registry name (geolocsft.families);
    its ImageRule says which fields apply ("smart": factor/min_pixels/max_pixels, "fit":
    factor/max_pixels, "square": fixed_side); fields left as None take the family's seed
    budget."""

    family: str
    max_pixels: int | None = None
    min_pixels: int | None = None
    factor: int | None = None
    fixed_side: int | None = None

    def __post_init__(self) -> None:
        spec = families.get(self.family)
        object.__setattr__(self, "family", spec.name)
        rule = spec.image
        used = _RULE_FIELDS[rule.resize]
        for name in ("max_pixels", "min_pixels", "factor", "fixed_side"):
            value = getattr(self, name)
            if name not in used:
                if value is not None:
                    raise ValueError(f"{name} does not apply to {spec.name} budgets "
                                     f"(use {', '.join(used)})")
                continue
            if value is None:
                object.__setattr__(self, name, getattr(rule, name))
            elif int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if rule.resize != "square" and (
                self.max_pixels < self.factor ** 2
                or (self.min_pixels is not None and self.min_pixels > self.max_pixels)):
            raise ValueError(
                f"need factor^2 <= max_pixels and min_pixels <= max_pixels, got "
                f"factor={self.factor} min_pixels={self.min_pixels} "
                f"max_pixels={self.max_pixels}"
            )

    @property
    def spec(self):
        return families.get(self.family)

    @property
    def max_tokens(self) -> int:
        """Vision tokens of the largest image this budget allows."""
        rule = self.spec.image
        return rule.tokens if rule.resize == "square" else self.max_pixels // self.factor ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageBudget:
        unknown = set(data) - {"family", "max_pixels", "min_pixels", "factor", "fixed_side"}
        if unknown:
            raise ValueError(f"unknown image budget fields: {sorted(unknown)}")
        if "family" not in data:
            raise ValueError("image budget has no 'family'")
        return cls(**data)


def default_budget(family) -> ImageBudget:
    """The seed's budget for a family (a registry name or entry)."""
    return ImageBudget(families.get(family).name)


# The fast preset's image budget: the family's `fast_tokens` (256 for Qwen: encode costs ~31 ms
# a token for the 3B on two laptop cores). A square family's count is fixed, so it keeps it.
IMAGE_PRESETS = ("seed", "fast")


def preset_budget(family, preset: str = "seed") -> ImageBudget:
    """The image budget of a named preset: "seed" (the paper's, the default) or "fast"."""
    if preset not in IMAGE_PRESETS:
        raise ValueError(f"unknown image preset {preset!r}; known: {', '.join(IMAGE_PRESETS)}")
    budget = default_budget(family)
    rule = budget.spec.image
    if preset == "fast" and rule.resize != "square":
        max_pixels = rule.fast_tokens * budget.factor ** 2
        budget = ImageBudget(budget.family, max_pixels=max_pixels, factor=budget.factor,
                             min_pixels=(min(budget.min_pixels, max_pixels)
                                         if rule.resize == "smart" else None))
    return budget


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 max_aspect: int = 0) -> tuple[int, int]:
    """The Qwen-VL processors' size rule: round each side to a multiple of `factor`, then scale
    both down (or up) together so the area stays within [min_pixels, max_pixels]. Returns
    (height, width)."""
    if min(height, width) <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if max_aspect and max(height, width) / min(height, width) > max_aspect:
        raise ValueError(f"aspect ratio over {max_aspect}:1 ({width}x{height})")
    # Sides under factor/2 round to 0 here; the scale-up branch below then lifts them.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_resize(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    """The "fit" rule: scale to the area max_pixels with the aspect kept, then floor each side
    to a multiple of `factor` (at least one `factor`, the long side capped so the area stays
    within the budget). Returns (height, width)."""
    if min(height, width) <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    scale = math.sqrt(max_pixels / (height * width))
    h_bar = math.floor(height * scale / factor) * factor
    w_bar = math.floor(width * scale / factor) * factor
    longest = (max_pixels // factor ** 2) * factor  # one row of patches, all the budget
    if h_bar == 0:
        h_bar, w_bar = factor, min(max(factor, (width // height) * factor), longest)
    elif w_bar == 0:
        h_bar, w_bar = min(max(factor, (height // width) * factor), longest), factor
    return h_bar, w_bar


def target_size(width: int, height: int, budget: ImageBudget) -> tuple[int, int]:
    """The (width, height) a width x height photo is resized to under `budget`."""
    rule = budget.spec.image
    if rule.resize == "square":
        return budget.fixed_side, budget.fixed_side
    if rule.resize == "fit":
        # The processor's rule is not idempotent (the floored size often floors to a larger one
        # when resized again), and the trainer's processor resizes the prepared photo once more
        # while mtmd keeps it: prepare at the rule's fixed point so both see the same pixels.
        # The area only grows, within the budget, so this ends (at most ~10 extra steps).
        h, w = fit_resize(height, width, budget.factor, budget.max_pixels)
        while (again := fit_resize(h, w, budget.factor, budget.max_pixels)) != (h, w):
            h, w = again
    else:
        h, w = smart_resize(height, width, budget.factor, budget.min_pixels, budget.max_pixels,
                            rule.max_aspect)
    return w, h


# --- opening -------------------------------------------------------------------------------

_heif_registered = False
# Pillow keeps its bomb limit in a process-wide global; we lift it only around our own open
# call (under this lock) and apply our own, per-call limit instead.
_open_lock = threading.Lock()


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC then fails as "not an image", naming the file
            pass
        _heif_registered = True


def _open_raw(source, max_pixels: int, label: str | None = None):
    """Open lazily (header only) and apply the pixel cap. Returns (image, label). `label`
    names bytes in errors (the file they were read from)."""
    _register_heif()
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = label or "<bytes>", bytes(source)
        if not data:
            raise ImageError(label, "empty data (0 bytes)")
        fp = io.BytesIO(data)
    else:
        label = os.fspath(source)
        path = Path(label)
        if not path.exists():
            raise ImageError(label, "file not found")
        if path.is_dir():
            raise ImageError(label, "is a folder, not an image file")
        why = not_a_regular_file(path)
        if why:  # a FIFO named x.jpg would block the open forever
            raise ImageError(label, why)
        if path.stat().st_size == 0:
            raise ImageError(label, "empty file (0 bytes)")
        fp = label
    with _open_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(fp)
        except Image.UnidentifiedImageError:
            raise ImageError(label, "not an image Pillow can read (unknown or corrupt format)")
        except Exception as exc:  # third-party decoders (pillow-heif) raise many kinds
            raise ImageError(label, f"cannot read image: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            label,
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (decompression-bomb guard; raise max_pixels if it is genuine)",
        )
    if width == 0 or height == 0:
        image.close()
        raise ImageError(label, f"image has no pixels ({width}x{height})")
    return image, label


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency composited on white, 16-bit and float
    greyscale scaled (not clipped) to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    elif mode == "1" or mode == "L":
        return image.convert("RGB")
    elif mode.startswith("I") or mode == "F":
        image = _scale_to_l(image)
        mode = "L"
    if mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, RGBX: Pillow's conversion.
    return image.convert("RGB")


def _scale_to_l(image: Image.Image) -> Image.Image:
    """16-bit ("I;16*") and 32-bit ("I", "F") greyscale to 8-bit "L" by scaling."""
    if image.mode != "F":
        image = image.convert("I") if image.mode != "I" else image
    low, high = image.getextrema()
    if image.mode == "I" and 0 <= low and high <= 255:
        scale, offset = 1.0, 0.0
    elif image.mode == "I" and 0 <= low and high <= 65535:
        scale, offset = 255.0 / 65535.0, 0.0  # a 16-bit sample range
    elif high > low:
        scale, offset = 255.0 / (high - low), -low * 255.0 / (high - low)
    else:
        scale, offset = 0.0, 0.0
    # +0.5: the F -> L conversion truncates, so this rounds to the nearest level.
    return image.convert("F").point(lambda v: v * scale + offset + 0.5).convert("L")


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)  # all 8 orientations
    except Exception:
        # EXIF too broken to read an orientation from: keep the stored one, the pixels are fine
        return image.copy()


def open_image(source, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               label: str | None = None) -> Image.Image:
    """Decode a photo (path, bytes, or an already opened PIL image) into an upright 8-bit RGB
    image. Raises ImageError naming the file for anything unusable: missing, empty,
    truncated, not an image, over `max_pixels`."""
    if isinstance(source, Image.Image):
        if source.width * source.height > max_pixels:
            raise ImageError(None, f"image is {source.width}x{source.height}, over the limit of "
                                   f"{max_pixels:,} pixels")
        rgb = to_rgb(_upright(source)).copy()
        rgb.info = {}
        return rgb
    image, label = _open_raw(source, max_pixels, label)
    with image:
        return _decode(image, label)


def _decode(image: Image.Image, label: str) -> Image.Image:
    """Pixels of a lazily opened image, upright, 8-bit RGB, without its metadata."""
    try:
        image.load()
        rgb = to_rgb(_upright(image))
        rgb.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"decompression bomb: {exc}") from exc
    except Exception as exc:  # decoders on damaged files raise OSError, RuntimeError, ...
        raise ImageError(label, f"cannot decode image (truncated or corrupt?): {exc}") from exc
    rgb.info = {}  # metadata stays with the original file, not with model input
    return rgb


# Previews (the app's thumbnails and preview pane) decode at reduced size: a JPEG through
# draft() at 1/2, 1/4 or 1/8 scale straight from the DCT, other formats in full, so they get a
# lower pixel cap than model input. Model input never goes through here (its pixels must be
# exactly those of training).
PREVIEW_MAX_PIXELS = 50_000_000


def open_preview(source, size: int, max_pixels: int = PREVIEW_MAX_PIXELS, *,
                 label: str | None = None) -> Image.Image:
    """An upright RGB image of at most `size` x `size` for display, decoded at the smallest
    size that still covers `size` (JPEG draft). Raises ImageError like open_image; an image
    that would decode to more than `max_pixels` is refused. `label` names bytes in errors."""
    image, label = _open_raw(source, DEFAULT_MAX_IMAGE_PIXELS, label)
    try:
        with image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # keeps each side >= size where it can
            if image.width * image.height > max_pixels:
                raise ImageError(label, f"image is {image.width}x{image.height}, too large to "
                                        f"preview (limit {max_pixels:,} pixels)")
            image.load()
            upright = _upright(image)
            upright.thumbnail((size, size), Image.Resampling.BILINEAR)
            rgb = to_rgb(upright)
            rgb.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"decompression bomb: {exc}") from exc
    except Exception as exc:
        raise ImageError(label, f"cannot decode image (truncated or corrupt?): {exc}") from exc
    rgb.info = {}
    return rgb


def fit_to_budget(image: Image.Image, budget: ImageBudget) -> Image.Image:
    """Resize an RGB image to the family's pixel budget (BICUBIC). Returns a new image."""
    image = to_rgb(image)
    try:
        size = target_size(image.width, image.height, budget)
    except ValueError as exc:
        raise ImageError(None, str(exc)) from exc
    if size == image.size:
        return image.copy()
    return image.resize(size, RESAMPLE)


def prepare_image(source, budget: ImageBudget,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open + fit: the one function captioning, training and inference use."""
    image = open_image(source, max_pixels=max_pixels)
    try:
        size = target_size(image.width, image.height, budget)
    except ValueError as exc:
        if isinstance(source, (bytes, bytearray, memoryview)):
            label = "<bytes>"
        else:
            label = None if isinstance(source, Image.Image) else source
        raise ImageError(label, str(exc)) from exc
    return image if size == image.size else image.resize(size, RESAMPLE)


def to_png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG of exactly these pixels, no metadata, so the same image always gives the
    same bytes (the engine sends it to llama.cpp as a data URI)."""
    clean = to_rgb(image).copy()
    clean.info = {}
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --- ground truth from EXIF ------------------------------------------------------------------

GPS_IFD = 0x8825
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


def _dms_to_degrees(value) -> float:
    parts = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(parts) <= 3:
        raise ValueError("bad GPS coordinate")
    total = 0.0
    for part, unit in zip(parts, (1.0, 60.0, 3600.0)):
        total += float(part) / unit
    return total


def _ref(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    return str(value).strip("\x00 ").upper()[:1]


def read_gps(source) -> tuple[float, float] | None:
    """(latitude, longitude) from the photo's EXIF GPS block (a path or the file's bytes), or
    None when it has none or it is unusable. Raises ImageError only when the file itself
    cannot be opened."""
    image, _ = _open_raw(source, max_pixels=2**62)  # header only: no decode, no bomb risk
    with image:
        return _gps_of(image)


def _gps_of(image: Image.Image) -> tuple[float, float] | None:
    try:
        gps = image.getexif().get_ifd(GPS_IFD)
        lat = _dms_to_degrees(gps[_GPS_LAT])
        lon = _dms_to_degrees(gps[_GPS_LON])
        lat_ref = _ref(gps.get(_GPS_LAT_REF, "N"))
        lon_ref = _ref(gps.get(_GPS_LON_REF, "E"))
    except Exception:  # no GPS, or EXIF in any broken shape: no ground truth
        return None
    if lat_ref == "S":
        lat = -lat
    if lon_ref == "W":
        lon = -lon
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    if lat == 0.0 and lon == 0.0:  # cameras write zeros when they had no fix
        return None
    return lat, lon


def read_photo_bytes(path: str | os.PathLike, *, allow_empty: bool = False) -> bytes:
    """A photo file's bytes; ImageError naming it when it cannot be read or (unless
    allow_empty: the caller keys an error row by the empty file's hash) is empty."""
    label = os.fspath(path)
    try:
        data = Path(label).read_bytes()
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageError(label, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None
    if not data and not allow_empty:
        raise ImageError(label, "empty file (0 bytes)")
    return data


def prepare_photo(data: bytes, budget: ImageBudget, label: str = "<bytes>",
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                  ) -> tuple[Image.Image, tuple[float, float] | None]:
    """The model's pixels (as `prepare_image` makes them) and the EXIF GPS (as `read_gps`
    reads it) from one photo's bytes, opened once: with the content hash taken from the same
    bytes, a photo is read from disk once. `label` (its path) names it in errors."""
    image, label = _open_raw(data, max_pixels, label)
    with image:
        gps = _gps_of(image)
        rgb = _decode(image, label)
    try:
        size = target_size(rgb.width, rgb.height, budget)
    except ValueError as exc:
        raise ImageError(label, str(exc)) from exc
    return (rgb if size == rgb.size else rgb.resize(size, RESAMPLE)), gps
