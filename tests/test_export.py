"""Exports read back by independent readers: csv, json, xml.etree, pyexiv2 and Pillow."""

import csv
import json
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from geolocsft.export import (
    CSV_COLUMNS,
    ExportExistsError,
    atomic_write_bytes,
    export_paths,
    write_exports,
)
from geolocsft.export_xmp import (
    GEOLOCSFT_NS,
    exif_gps_fields,
    parse_xmp_coordinate,
    sidecar_path,
    write_exif_gps,
    write_sidecar,
    xmp_coordinate,
)
from geolocsft.images import read_gps
from geolocsft.store import PhotoResult, Status

pyexiv2 = pytest.importorskip("pyexiv2")

KML = "{http://www.opengis.net/kml/2.2}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def result(path, lat=-33.8688, lon=151.2093, **kw) -> PhotoResult:
    fields = dict(
        photo_sha256="a" * 64, model_sha256="b" * 64, prompt_version="gls-v1",
        settings_hash="c" * 16, path=str(path), model_name="tiny & <odd>", latitude=lat,
        longitude=lon, parse_status="ok", place_city="Sydney", place_state="New South Wales",
        place_country="Australia", place_country_code="AU",
        analysis_json=json.dumps({"conclusion": "harbour & <bridge>"}),
    )
    fields.update(kw)
    return PhotoResult(**fields)


@pytest.fixture
def results(tmp_path):
    return [
        result(tmp_path / "b/sydney ünï.jpg", truth_lat=48.85, truth_lon=2.35, truth_km=16960.0),
        result(tmp_path / "a/nothing.jpg", lat=None, lon=None, parse_status="no_answer",
               parse_reason="no <answer> block"),
        result(tmp_path / "c/broken.jpg", lat=None, lon=None, status=Status.ERROR,
               error="broken.jpg: cannot decode image", parse_status=""),
        result(tmp_path / "d/sampled.jpg", lat=-12.5, lon=-45.25, samples=5, temperature=0.7,
               region='=HYPERLINK("http://x")',
               consensus_lat=-12.5, consensus_lon=-45.25, radius_km=321.5),
    ]


def test_csv_geojson_kml_read_back(tmp_path, results):
    out = tmp_path / "out"
    written = write_exports(results, out, flag_km=500)
    assert [p.name for p in written] == ["geolocsft.csv", "geolocsft.geojson", "geolocsft.kml"]
    assert not list(out.glob("*.tmp-*"))

    with open(out / "geolocsft.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 4  # every photo, errors included
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    sydney = by_name["sydney ünï.jpg"]
    assert float(sydney["latitude"]) == pytest.approx(-33.8688)
    assert sydney["flagged"] == "yes" and float(sydney["exif_km"]) == 16960.0
    assert sydney["place"] == "Sydney, New South Wales"
    assert by_name["nothing.jpg"]["latitude"] == "" and by_name["nothing.jpg"]["parse_status"] == "no_answer"
    assert by_name["broken.jpg"]["status"] == "error" and "cannot decode" in by_name["broken.jpg"]["error"]
    assert float(by_name["sampled.jpg"]["radius_km"]) == 321.5 and by_name["sampled.jpg"]["samples"] == "5"
    # Model text that a spreadsheet would execute stays text.
    assert by_name["sampled.jpg"]["model_region"] == "'=HYPERLINK(\"http://x\")"
    assert float(by_name["sampled.jpg"]["latitude"]) == -12.5  # numbers are left alone

    geo = json.loads((out / "geolocsft.geojson").read_text(encoding="utf-8"))
    assert geo["type"] == "FeatureCollection"
    assert len(geo["features"]) == 2  # only photos with a point
    for feature in geo["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        lon, lat = feature["geometry"]["coordinates"]  # RFC 7946: [lon, lat]
        assert -90 <= lat <= 90 and -180 <= lon <= 180
    syd = next(f for f in geo["features"] if f["properties"]["path"].endswith("sydney ünï.jpg"))
    assert syd["geometry"]["coordinates"] == [151.2093, -33.8688]
    assert syd["properties"]["flagged"] is True
    sampled = next(f for f in geo["features"] if f["properties"]["samples"] == 5)
    assert sampled["properties"]["radius_km"] == 321.5

    kml = ET.parse(out / "geolocsft.kml").getroot()
    marks = kml.findall(f"{KML}Document/{KML}Placemark")
    assert len(marks) == 2
    names = {m.find(f"{KML}name").text: m for m in marks}
    mark = names["sydney ünï.jpg"]
    lon, lat, alt = mark.find(f"{KML}Point/{KML}coordinates").text.split(",")
    assert (float(lon), float(lat)) == (pytest.approx(151.2093), pytest.approx(-33.8688))
    assert mark.find(f"{KML}styleUrl").text == "#flagged"
    assert "harbour & <bridge>" in mark.find(f"{KML}description").text


def test_exports_never_replace_without_force(tmp_path, results):
    out = tmp_path / "out"
    out.mkdir()
    users = export_paths(out)[1]
    users.write_text("my own map")
    with pytest.raises(ExportExistsError, match="geolocsft.geojson"):
        write_exports(results, out)
    assert users.read_text() == "my own map"
    assert not (out / "geolocsft.csv").exists()  # refused before writing anything
    write_exports(results, out, force=True)
    assert json.loads(users.read_text())["type"] == "FeatureCollection"


def test_atomic_write_refuses_and_cleans_up(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_bytes(target, b"1")
    with pytest.raises(ExportExistsError):
        atomic_write_bytes(target, b"2")
    atomic_write_bytes(target, b"3", force=True)
    assert target.read_bytes() == b"3"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("value,pos,neg,text", [
    (48.8566, "N", "S", "48,51.396000N"),
    (-33.8688, "N", "S", "33,52.128000S"),
    (-0.5, "E", "W", "0,30.000000W"),
    (179.9999999999, "E", "W", "180,0.000000E"),
])
def test_xmp_coordinate_format(value, pos, neg, text):
    assert xmp_coordinate(value, pos, neg) == text
    assert parse_xmp_coordinate(text) == pytest.approx(value, abs=1e-6)


def _xmp_description(path):
    root = ET.parse(path).getroot()
    return root.find(f"{RDF}RDF/{RDF}Description")


def test_new_sidecar_has_digikam_gps_and_place_fields(tmp_path):
    photo = tmp_path / "my photo ü.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    before = photo.read_bytes()
    outcome = write_sidecar(photo, result(photo, radius_km=12.0))
    assert outcome.action == "created"
    side = sidecar_path(photo)
    assert side.name == "my photo ü.jpg.xmp"
    assert photo.read_bytes() == before  # the original is untouched

    xmp = pyexiv2.Image(str(side)).read_xmp()
    assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]) == pytest.approx(-33.8688, abs=1e-6)
    assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLongitude"]) == pytest.approx(151.2093, abs=1e-6)
    assert xmp["Xmp.exif.GPSVersionID"] == "2.0.0.0"
    assert xmp["Xmp.photoshop.City"] == "Sydney"
    assert xmp["Xmp.photoshop.Country"] == "Australia"
    assert xmp["Xmp.iptc.CountryCode"] == "AU"
    # And as plain RDF/XML, the way darktable's parser sees it.
    desc = _xmp_description(side)
    attrs = {**desc.attrib, **{child.tag: child.text for child in desc}}
    assert attrs["{http://ns.adobe.com/exif/1.0/}GPSLatitude"].endswith("S")
    assert attrs[f"{{{GEOLOCSFT_NS}}}Estimated"] == "True"
    assert attrs[f"{{{GEOLOCSFT_NS}}}RadiusKm"] == "12.0"


DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    {gps}
   xmp:Rating="4"
   photoshop:City="Manly"
   darktable:xmp_version="5">
   <darktable:history><rdf:Seq/></darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_existing_sidecar_is_merged_keeping_user_fields(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    side = sidecar_path(photo)
    side.write_text(DARKTABLE_SIDECAR.format(gps=""), encoding="utf-8")
    outcome = write_sidecar(photo, result(photo))
    assert outcome.action == "merged"
    xmp = pyexiv2.Image(str(side)).read_xmp()
    assert xmp["Xmp.xmp.Rating"] == "4"
    assert xmp["Xmp.darktable.xmp_version"] == "5"
    assert xmp["Xmp.photoshop.City"] == "Manly"  # typed by a person: kept
    assert xmp["Xmp.photoshop.Country"] == "Australia"  # was empty: filled
    assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]) == pytest.approx(-33.8688, abs=1e-6)
    # A rerun updates what we wrote, without --force.
    again = write_sidecar(photo, result(photo, lat=-34.0))
    assert again.action == "updated"
    assert parse_xmp_coordinate(pyexiv2.Image(str(side)).read_xmp()["Xmp.exif.GPSLatitude"]) == pytest.approx(-34.0)


def test_someone_elses_gps_in_a_sidecar_needs_force(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    side = sidecar_path(photo)
    gps = 'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="10,0.0N" exif:GPSLongitude="20,0.0E"'
    side.write_text(DARKTABLE_SIDECAR.format(gps=gps), encoding="utf-8")
    before = side.read_bytes()
    outcome = write_sidecar(photo, result(photo))
    assert outcome.action == "skipped" and "--force" in outcome.message
    assert side.read_bytes() == before
    forced = write_sidecar(photo, result(photo), force=True)
    assert forced.action == "merged"
    xmp = pyexiv2.Image(str(side)).read_xmp()
    assert parse_xmp_coordinate(xmp["Xmp.exif.GPSLatitude"]) == pytest.approx(-33.8688, abs=1e-6)
    assert xmp["Xmp.xmp.Rating"] == "4"


def test_unreadable_sidecar_is_left_alone(tmp_path):
    photo = tmp_path / "p.jpg"
    side = sidecar_path(photo)
    side.write_bytes(b"\x00garbage")
    outcome = write_sidecar(photo, result(photo))
    assert outcome.action == "skipped" and "unreadable" in outcome.message
    assert side.read_bytes() == b"\x00garbage"


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_exif_gps_into_a_copy_read_back_by_pillow(tmp_path, fmt, suffix):
    photo = tmp_path / f"orig{suffix}"
    Image.new("RGB", (32, 24), "green").save(photo, fmt)
    before = photo.read_bytes()
    copy = tmp_path / "copies" / f"orig{suffix}"
    outcome = write_exif_gps(photo, copy, result(photo, lat=-33.8688, lon=-70.6693))
    assert outcome.action == "created", outcome.message
    assert photo.read_bytes() == before
    lat, lon = read_gps(copy)  # Pillow's EXIF reader, not Exiv2
    assert lat == pytest.approx(-33.8688, abs=1e-6) and lon == pytest.approx(-70.6693, abs=1e-6)
    with Image.open(copy) as img:
        assert img.size == (32, 24)
    # A rerun refreshes its own copy; someone else's file at that path needs --force.
    assert write_exif_gps(photo, copy, result(photo, lat=1.0, lon=2.0)).action == "created"
    assert read_gps(copy) == (pytest.approx(1.0), pytest.approx(2.0))
    other = tmp_path / "copies" / f"other{suffix}"
    Image.new("RGB", (8, 8)).save(other, fmt)
    assert write_exif_gps(photo, other, result(photo)).action == "skipped"


def test_exif_existing_gps_is_kept_unless_forced_and_in_place_works(tmp_path):
    photo = tmp_path / "gps.jpg"
    Image.new("RGB", (16, 16)).save(photo)
    first = write_exif_gps(photo, photo, result(photo, lat=10.0, lon=20.0))
    assert first.action == "updated"
    assert read_gps(photo) == (pytest.approx(10.0), pytest.approx(20.0))
    # Our own earlier estimate is marked as such and may be updated without --force.
    with Image.open(photo) as img:
        assert b"geolocsft model estimate" in img.getexif().get_ifd(0x8825)[27]
    write_exif_gps(photo, photo, result(photo, lat=11.0, lon=21.0))
    assert read_gps(photo) == (pytest.approx(11.0), pytest.approx(21.0))
    # A camera's own fix is kept unless forced.
    data = pyexiv2.ImageData(photo.read_bytes())
    data.modify_exif({"Exif.GPSInfo.GPSProcessingMethod": "charset=Ascii GPS"})
    photo.write_bytes(data.get_bytes())
    data.close()
    second = write_exif_gps(photo, photo, result(photo, lat=-5.0, lon=-6.0))
    assert second.action == "skipped" and "already has EXIF GPS" in second.message
    assert read_gps(photo) == (pytest.approx(11.0), pytest.approx(21.0))
    write_exif_gps(photo, photo, result(photo, lat=-5.0, lon=-6.0), force=True)
    assert read_gps(photo) == (pytest.approx(-5.0), pytest.approx(-6.0))


def test_exif_into_heic_is_a_clear_per_file_error(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    photo = tmp_path / "p.heic"
    Image.new("RGB", (16, 16)).save(photo, "HEIF")
    outcome = write_exif_gps(photo, tmp_path / "out.heic", result(photo))
    assert outcome.action == "error" and "p.heic" in outcome.message
    assert not (tmp_path / "out.heic").exists()


def test_exif_rationals_round_carry():
    fields = exif_gps_fields(12.99999999999, -0.0000001)
    assert fields["Exif.GPSInfo.GPSLatitude"] == "13/1 0/1 0/10000"
    assert fields["Exif.GPSInfo.GPSLongitudeRef"] == "W"
