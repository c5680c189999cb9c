"""Dataset and prediction-file readers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin

from geolocsft.datasets import (
    DatasetError,
    Sample,
    read_csv,
    read_dataset,
    read_exif_folder,
    read_im2gps3k,
    read_predictions,
    read_yfcc4k,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch_images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8")  # existence is all these readers check


IM2GPS_HEADER = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label\n"


def test_im2gps3k(tmp_path):
    touch_images(tmp_path / "im2gps3ktest", "a.jpg", "b.jpg")
    csv = write(tmp_path / "im2gps3k_places365.csv", IM2GPS_HEADER
                + "a.jpg,someone,48.8583,2.2944,1,2,3\n"
                + "b.jpg,other,-33.8568,151.2153,1,2,3\n")
    result = read_im2gps3k(csv, images_dir=tmp_path / "im2gps3ktest")
    assert result.warnings == []
    assert result.samples == [
        Sample("a.jpg", tmp_path / "im2gps3ktest" / "a.jpg", 48.8583, 2.2944),
        Sample("b.jpg", tmp_path / "im2gps3ktest" / "b.jpg", -33.8568, 151.2153),
    ]


def test_im2gps3k_swapped_headers_are_detected(tmp_path):
    # the copy whose header says LON, LAT while the values are latitude first
    touch_images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    csv = write(tmp_path / "im2gps3k_places365.csv",
                "IMG_ID,AUTHOR,LON,LAT,S3_Label\n"
                "a.jpg,x,48.8583,2.2944,1\n"
                "b.jpg,x,-33.8568,151.2153,1\n"
                "c.jpg,x,35.6595,139.7004,1\n")
    result = read_im2gps3k(csv)
    assert [(s.lat, s.lon) for s in result.samples] == [
        (48.8583, 2.2944), (-33.8568, 151.2153), (35.6595, 139.7004)]
    assert len(result.warnings) == 1 and "swapped" in result.warnings[0]
    assert str(csv) in result.warnings[0]


def test_headers_not_swapped_when_ranges_do_not_say_so(tmp_path):
    # all values within +-90 in both columns: the header is trusted
    touch_images(tmp_path, "a.jpg")
    csv = write(tmp_path / "im2gps3k.csv", IM2GPS_HEADER + "a.jpg,x,10.5,80.25,1,2,3\n")
    result = read_im2gps3k(csv)
    assert (result.samples[0].lat, result.samples[0].lon) == (10.5, 80.25)
    assert result.warnings == []


def test_yfcc4k_keeps_rows_whose_image_exists(tmp_path):
    touch_images(tmp_path / "img", "1.jpg", "3.jpg")
    csv = write(tmp_path / "yfcc4k.csv", "IMG_ID,LAT,LON\n1.jpg,1,2\n2.jpg,3,4\n3.jpg,5,6\n"
                                         "4.jpg,7,8\n")
    result = read_yfcc4k(csv, images_dir=tmp_path / "img")
    assert [s.id for s in result.samples] == ["1.jpg", "3.jpg"]
    assert any("2 of 4 images not found" in w for w in result.warnings)
    assert len(read_yfcc4k(csv, require_images=False).samples) == 4


def test_generic_csv_autodetects_columns(tmp_path):
    touch_images(tmp_path / "photos", "x.jpg", "y.jpg")
    csv = write(tmp_path / "mine.csv",
                "\ufeffFilename;Latitude;Lng;note\nphotos/x.jpg;1.5;-2.5;hi\n"
                "photos/y.jpg;-80;170;\n")
    result = read_csv(csv)
    assert [(s.id, s.lat, s.lon) for s in result.samples] == [
        ("photos/x.jpg", 1.5, -2.5), ("photos/y.jpg", -80.0, 170.0)]
    assert result.samples[0].image == tmp_path / "photos" / "x.jpg"


def test_generic_csv_overrides_and_bad_rows(tmp_path):
    touch_images(tmp_path, "p1.jpg", "p2.jpg", "p3.jpg")
    csv = write(tmp_path / "gt.csv", "pic,y,x,lat\np1.jpg,10,20,999\np2.jpg,abc,20,0\n"
                                     "p3.jpg,95,20,0\n,1,1,1\n")
    result = read_csv(csv, image_column="PIC", lat_column="y", lon_column="x")
    assert [(s.id, s.lat, s.lon) for s in result.samples] == [("p1.jpg", 10.0, 20.0)]
    text = " ".join(result.warnings)
    assert "2 rows with missing, non-numeric or out-of-range" in text and "lines 3, 4" in text
    assert "1 rows without an image name" in text
    with pytest.raises(DatasetError, match="no column 'nope'"):
        read_csv(csv, image_column="nope")


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("", "file is empty"),
    ("image,lat,lon\n", "no data rows"),
    ("image,foo,bar\na.jpg,1,2\n", "no latitude column"),
    ("image,lat,lon\na.jpg,north,east\nb.jpg,,\n", "no row has numeric coordinates"),
])
def test_bad_dataset_files_raise_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "set.csv"
    if content is not None:
        write(path, content)
    with pytest.raises(DatasetError, match=problem) as info:
        read_csv(path, require_images=False)
    assert str(info.value).startswith(f"{path}: ")


def gps_jpeg(path, lat, lon):
    r = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N" if lat >= 0 else "S", 2: (r(int(abs(lat) * 1e4), 10_000), r(0), r(0)),
                3: "E" if lon >= 0 else "W", 4: (r(int(abs(lon) * 1e4), 10_000), r(0), r(0))})
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 10)).save(path, "JPEG", exif=exif)


def test_exif_folder(tmp_path):
    gps_jpeg(tmp_path / "trip" / "day1" / "a.jpg", 48.8583, 2.2944)
    gps_jpeg(tmp_path / "trip" / "b.JPEG", -33.8568, -70.5)
    Image.new("RGB", (4, 4)).save(tmp_path / "trip" / "nogps.png")
    (tmp_path / "trip" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "trip" / "notes.txt").write_text("ignored")
    gps_jpeg(tmp_path / "trip" / ".hidden" / "c.jpg", 1.0, 1.0)
    result = read_exif_folder(tmp_path / "trip")
    assert [(s.id, round(s.lat, 4), round(s.lon, 4)) for s in result.samples] == [
        ("b.JPEG", -33.8568, -70.5), ("day1/a.jpg", 48.8583, 2.2944)]
    assert result.without_gps == [tmp_path / "trip" / "nogps.png"]
    text = " ".join(result.warnings)
    assert "1 of 4 photos have no EXIF GPS" in text and "broken.jpg" in text
    assert read_dataset(tmp_path / "trip").samples == result.samples


def test_exif_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="folder not found"):
        read_exif_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no photos"):
        read_exif_folder(tmp_path / "empty")
    Image.new("RGB", (4, 4)).save(tmp_path / "empty" / "x.jpg")
    with pytest.raises(DatasetError, match="none of the 1 photos carries EXIF GPS"):
        read_exif_folder(tmp_path / "empty")


def test_read_dataset_dispatches_on_name(tmp_path):
    touch_images(tmp_path, "a.jpg")
    swapped = "IMG_ID,LON,LAT\na.jpg,10,120\n"
    im2gps = read_dataset(write(tmp_path / "im2gps3k_places365.csv", swapped))
    assert (im2gps.samples[0].lat, im2gps.samples[0].lon) == (10.0, 120.0)
    assert "swapped" in im2gps.warnings[0]
    # the generic reader trusts headers: latitude 120 is out of range
    with pytest.raises(DatasetError, match="no usable rows"):
        read_dataset(write(tmp_path / "other.csv", swapped))


def test_predictions_official_format(tmp_path):
    csv = write(tmp_path / "preds.csv",
                "id,raw,TRUE_LAT,true_lon,pred_lat,pred_lon,parse_status\n"
                'a,"text, with comma",48.85,2.35,48.86,2.34,ok\n'
                "b,,52.52,13.40,,,empty\n"
                "c,,40.0,-74.0,north,-73,malformed\n"
                "d,,10,10,95,10,out_of_range\n"
                "e,,abc,10,1,1,ok\n"
                "f,,-33.9,151.2,-33.8,151.3,ok\n")
    result = read_predictions(csv)
    assert result.ids == ["a", "b", "c", "d", "f"]
    assert result.rows == [(48.86, 2.34, 48.85, 2.35), (None, None, 52.52, 13.40),
                           (None, None, 40.0, -74.0), (None, None, 10.0, 10.0),
                           (-33.8, 151.3, -33.9, 151.2)]
    assert result.unparsed == 3
    assert len(result.warnings) == 1 and "1 rows" in result.warnings[0]
    assert "line" in result.warnings[0] and "6" in result.warnings[0]


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("", "file is empty"),
    ("pred_lat,pred_lon,true_lat\n1,2,3\n", "missing column.*true_lon"),
    ("pred_lat,pred_lon,true_lat,true_lon\n1,2,x,y\n1,2,,\n", "no row has numeric"),
])
def test_bad_prediction_files(tmp_path, content, problem):
    path = tmp_path / "p.csv"
    if content is not None:
        write(path, content)
    with pytest.raises(DatasetError, match=problem) as info:
        read_predictions(path)
    assert info.value.path == str(path)


def test_non_utf8_file_is_a_dataset_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("pred_lat,pred_lon,true_lat,true_lon\n1,2,3,4 \xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not a UTF-8"):
        read_predictions(path)


def test_yfcc4k_other_column_spellings(tmp_path):
    touch_images(tmp_path, "9.jpg")
    csv = write(tmp_path / "yfcc4k.csv", "photo_id,Latitude,Longitude\n9.jpg,-12.5,130.8\n")
    assert [(s.id, s.lat, s.lon) for s in read_yfcc4k(csv).samples] == [("9.jpg", -12.5, 130.8)]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("pred_lattruon,;\t\n\"-.0123456789x ")), max_size=200))
def test_prediction_reader_only_ever_raises_dataset_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "p.csv"
    path.write_text("pred_lat,pred_lon,true_lat,true_lon\n" + text)
    try:
        result = read_predictions(path)
    except DatasetError:
        return
    for pred_lat, pred_lon, true_lat, true_lon in result.rows:
        assert -90 <= true_lat <= 90 and -180 <= true_lon <= 180
        assert (pred_lat is None) == (pred_lon is None)
