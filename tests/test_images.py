"""Image preparation: orientation, modes, bombs, broken files, HEIF, budgets, GPS."""

import io
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, TiffImagePlugin

from geolocsft.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageBudget,
    ImageError,
    default_budget,
    fit_to_budget,
    open_image,
    prepare_image,
    read_gps,
    smart_resize,
    target_size,
    to_png_bytes,
)
from tests.fixtures.images import png_header_only

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
W, H = 64, 32


def upright_pixel(x, y):
    """The upright test picture: red top-left, green top-right, blue bottom-left, yellow
    bottom-right quadrant."""
    top, left = y < H // 2, x < W // 2
    return {(True, True): RED, (True, False): GREEN,
            (False, True): BLUE, (False, False): YELLOW}[(top, left)]


# How a camera stores the upright picture for each EXIF orientation, written from the TIFF
# spec's "0th row / 0th column" wording: stored (x, y) shows upright (X, Y).
STORED_FROM_UPRIGHT = {
    1: (False, lambda x, y: (x, y)),                  # top, left
    2: (False, lambda x, y: (W - 1 - x, y)),          # top, right
    3: (False, lambda x, y: (W - 1 - x, H - 1 - y)),  # bottom, right
    4: (False, lambda x, y: (x, H - 1 - y)),          # bottom, left
    5: (True, lambda x, y: (y, x)),                   # left, top
    6: (True, lambda x, y: (W - 1 - y, x)),           # right, top
    7: (True, lambda x, y: (W - 1 - y, H - 1 - x)),   # right, bottom
    8: (True, lambda x, y: (y, H - 1 - x)),           # left, bottom
}


def stored_jpeg(path, orientation):
    swapped, mapping = STORED_FROM_UPRIGHT[orientation]
    size = (H, W) if swapped else (W, H)
    stored = Image.new("RGB", size)
    stored.putdata([upright_pixel(*mapping(x, y)) for y in range(size[1]) for x in range(size[0])])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif)


def close(a, b, tol=40):
    return all(abs(p - q) <= tol for p, q in zip(a, b))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    stored_jpeg(path, orientation)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (W, H)
    for (x, y), colour in {(8, 8): RED, (W - 8, 8): GREEN, (8, H - 8): BLUE,
                           (W - 8, H - 8): YELLOW}.items():
        assert close(image.getpixel((x, y)), colour), (orientation, x, y, image.getpixel((x, y)))


def saved(tmp_path, image, name, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_cmyk_jpeg_to_rgb(tmp_path):
    path = saved(tmp_path, Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "cmyk.jpg")
    assert Image.open(path).mode == "CMYK"
    assert close(open_image(path).getpixel((8, 8)), (0, 255, 255), tol=8)


def test_palette_with_transparency_composites_on_white(tmp_path):
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 0, 1])
    path = saved(tmp_path, image, "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = open_image(path)
    assert [out.getpixel((x, 0)) for x in range(4)] == [(255, 255, 255), BLUE] * 2


def test_alpha_composites_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    out = open_image(saved(tmp_path, rgba, "rgba.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == BLUE
    la = Image.new("LA", (1, 1), (0, 128))  # black at half opacity over white: mid grey
    grey = open_image(saved(tmp_path, la, "la.png")).getpixel((0, 0))
    assert grey[0] == grey[1] == grey[2] and abs(grey[0] - 127) <= 1


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    image = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32896, 65535)):  # 32896 = 128 * 257
        image.putpixel((x, 0), value)
    path = saved(tmp_path, image, "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = open_image(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128),
                                                        (255, 255, 255)]


def test_grey_and_bilevel(tmp_path):
    assert open_image(saved(tmp_path, Image.new("L", (2, 2), 77), "l.png")).getpixel((0, 0)) \
        == (77, 77, 77)
    assert open_image(saved(tmp_path, Image.new("1", (2, 2), 1), "b.png")).getpixel((1, 1)) \
        == (255, 255, 255)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(50_000, 50_000))  # 2.5 gigapixels declared
    with pytest.raises(ImageError, match="decompression-bomb") as info:
        open_image(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    # the cap is per call, and Pillow's process-wide limit is left as it was
    small = saved(tmp_path, Image.new("RGB", (100, 100)), "small.png")
    with pytest.raises(ImageError, match="10,000 pixels, over the limit of 5,000"):
        open_image(small, max_pixels=5000)
    assert open_image(small).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == before
    # our cap governs, not Pillow's global: with Pillow's limit shrunk below this image,
    # it still opens under our default cap (and Pillow's limit is restored afterwards)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert open_image(small).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is not a picture", "not an image"),
])
def test_unusable_files_name_the_path(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        open_image(path)
    assert str(info.value).startswith(str(path) + ": ")


def test_truncated_and_missing_files(tmp_path):
    full = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(full, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        open_image(path)
    assert info.value.path == str(path)
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="empty data"):
        open_image(b"")


def test_heic_round_trip(tmp_path):
    pytest.importorskip("pillow_heif")
    from geolocsft.images import _register_heif

    _register_heif()
    source = Image.new("RGB", (96, 64), (200, 30, 30))
    path = saved(tmp_path, source, "photo.heic", format="HEIF", quality=95)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (96, 64)
    assert close(image.getpixel((48, 32)), (200, 30, 30), tol=12)
    assert prepare_image(path.read_bytes(), default_budget("gemma3")).size == (896, 896)


def test_budget_defaults_and_round_trip():
    qwen = default_budget("qwen2.5-vl")
    assert (qwen.factor, qwen.min_pixels, qwen.max_pixels) == (28, 3136, 1_003_520)
    assert qwen.max_pixels == 1280 * 28 * 28
    gemma = default_budget("gemma3")
    assert gemma.fixed_side == 896
    for budget in (qwen, gemma, ImageBudget("qwen2.5-vl", max_pixels=112 * 112),
                   ImageBudget("gemma3", fixed_side=224)):
        data = budget.to_dict()
        assert data["family"] in ("qwen2.5-vl", "gemma3")
        assert ImageBudget.from_dict(data) == budget
    with pytest.raises(ValueError, match="unknown"):
        ImageBudget.from_dict({"family": "gemma3", "side": 3})
    with pytest.raises(ValueError):
        ImageBudget("gemma3", max_pixels=100)
    with pytest.raises(ValueError):
        ImageBudget("qwen2.5-vl", max_pixels=100)  # below one 28x28 cell


@pytest.mark.parametrize("size, expected", [
    ((4032, 3024), (1148, 840)),  # 144x108 cells = 12.2 MP > budget: scaled by 3.486, floored
    ((1000, 1000), (980, 980)),   # rounds to 1008^2 = 1,016,064 > 1,003,520: floored to 35 cells
    ((896, 672), (896, 672)),     # already multiples of 28 within budget: unchanged
    ((30, 20), (84, 56)),         # 28x28 < min_pixels 3136: scaled up by 2.29, ceiled
])
def test_qwen_budget_rule(size, expected):
    budget = default_budget("qwen2.5-vl")
    w, h = target_size(*size, budget)
    assert (w, h) == expected
    assert w % 28 == 0 and h % 28 == 0
    assert budget.min_pixels <= w * h <= budget.max_pixels
    assert w / h == pytest.approx(size[0] / size[1], rel=0.05)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 9000), st.integers(1, 9000),
       st.sampled_from([3136 * 4, 112 * 112, 1_003_520, 2_000_000]))
def test_smart_resize_matches_transformers_and_the_rules(height, width, max_pixels):
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ValueError, match="aspect"):
            smart_resize(height, width, 28, 3136, max_pixels, 200)
        return
    h, w = smart_resize(height, width, 28, 3136, max_pixels, 200)
    assert h % 28 == 0 and w % 28 == 0 and h >= 28 and w >= 28
    # within the budget, unless one side is already at its 28 px minimum
    assert h * w <= max_pixels or min(h, w) == 28
    if REFERENCE_SMART_RESIZE is not None:
        assert (h, w) == REFERENCE_SMART_RESIZE(height, width, factor=28, min_pixels=3136,
                                                max_pixels=max_pixels)


try:  # transformers' own rule, when the train extra is installed
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as REFERENCE_SMART_RESIZE,
    )
except ImportError:
    REFERENCE_SMART_RESIZE = None


def test_gemma_budget_squashes_to_a_square(tmp_path):
    path = saved(tmp_path, Image.new("RGB", (1200, 400), GREEN), "wide.png")
    assert prepare_image(path, default_budget("gemma3")).size == (896, 896)
    tiny = ImageBudget("gemma3", fixed_side=224)
    assert prepare_image(path, tiny).size == (224, 224)


def test_tiny_qwen_budget(tmp_path):
    path = saved(tmp_path, Image.new("RGB", (4032, 3024), RED), "big.jpg", quality=80)
    out = prepare_image(path, ImageBudget("qwen2.5-vl", max_pixels=112 * 112))
    assert out.width % 28 == 0 and out.height % 28 == 0
    assert out.width * out.height <= 112 * 112 and out.width > out.height
    assert out.mode == "RGB"


def test_preparation_is_deterministic_and_png_lossless(tmp_path):
    noise = Image.merge("RGB", [Image.effect_noise((700, 500), 50 + 10 * i) for i in range(3)])
    path = saved(tmp_path, noise, "noise.png")
    budget = ImageBudget("qwen2.5-vl", max_pixels=200_000)
    a, b = prepare_image(path, budget), prepare_image(path, budget)
    png_a, png_b = to_png_bytes(a), to_png_bytes(b)
    assert png_a == png_b
    decoded = Image.open(io.BytesIO(png_a))
    assert decoded.mode == "RGB" and decoded.tobytes() == a.tobytes()
    # fit_to_budget on an already opened image gives the same pixels
    assert fit_to_budget(open_image(path), budget).tobytes() == a.tobytes()
    # a photo already at the budget's size is not resampled
    exact = Image.new("RGB", (56, 84), BLUE)
    assert fit_to_budget(exact, budget).tobytes() == exact.tobytes()


def rational(value):
    frac = Fraction(value).limit_denominator(10_000)
    return TiffImagePlugin.IFDRational(frac.numerator, frac.denominator)


def jpeg_with_gps(path, gps_tags):
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update(gps_tags)
    Image.new("RGB", (8, 8), RED).save(path, "JPEG", exif=exif)
    return path


def test_read_gps_from_exif(tmp_path):
    # Sydney Opera House: 33°51'25.2"S 151°12'54.0"E
    path = jpeg_with_gps(tmp_path / "sydney.jpg", {
        1: "S", 2: (rational(33), rational(51), rational(25.2)),
        3: "E", 4: (rational(151), rational(12), rational(54)),
    })
    lat, lon = read_gps(path)
    assert lat == pytest.approx(-(33 + 51 / 60 + 25.2 / 3600), abs=1e-9)
    assert lon == pytest.approx(151 + 12 / 60 + 54 / 3600, abs=1e-9)
    west = jpeg_with_gps(tmp_path / "nyc.jpg", {
        1: "N", 2: (rational(40.7128), rational(0), rational(0)),
        3: "W", 4: (rational(74.006), rational(0), rational(0)),
    })
    assert read_gps(west) == pytest.approx((40.7128, -74.006))


def test_read_gps_returns_none_on_missing_or_bad_exif(tmp_path):
    plain = saved(tmp_path, Image.new("RGB", (4, 4)), "plain.jpg")
    assert read_gps(plain) is None
    only_ref = jpeg_with_gps(tmp_path / "ref.jpg", {1: "N", 3: "E"})
    assert read_gps(only_ref) is None
    zero_den = jpeg_with_gps(tmp_path / "zero.jpg", {
        1: "N", 2: (TiffImagePlugin.IFDRational(0, 0),) * 3,
        3: "E", 4: (TiffImagePlugin.IFDRational(0, 0),) * 3,
    })
    assert read_gps(zero_den) is None
    out_of_range = jpeg_with_gps(tmp_path / "far.jpg", {
        1: "N", 2: (rational(95), rational(0), rational(0)),
        3: "E", 4: (rational(10), rational(0), rational(0)),
    })
    assert read_gps(out_of_range) is None
    with pytest.raises(ImageError, match="file not found"):
        read_gps(tmp_path / "missing.jpg")


def test_image_error_shape():
    err = ImageError("a/b.jpg", "broken")
    assert isinstance(err, ValueError) and str(err) == "a/b.jpg: broken"
    assert (err.path, err.reason) == ("a/b.jpg", "broken")
    assert math.isclose(DEFAULT_MAX_IMAGE_PIXELS, 2e8)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize("junk", [
    b"Exif\x00\x00garbage",
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03",  # IFD cut short
])
def test_corrupt_exif_keeps_the_photo_usable(tmp_path, junk):
    path = tmp_path / "junk.jpg"
    Image.new("RGB", (20, 10), RED).save(path, exif=junk)
    image = open_image(path)
    assert image.size == (20, 10) and close(image.getpixel((10, 5)), RED)
    assert read_gps(path) is None


def test_open_image_accepts_an_opened_pil_image(tmp_path):
    path = tmp_path / "o6.jpg"
    stored_jpeg(path, 6)
    with Image.open(path) as raw:
        assert raw.size == (H, W)
        image = open_image(raw)
    assert image.size == (W, H) and close(image.getpixel((8, 8)), RED)
    assert open_image(path).tobytes() == image.tobytes()
    with pytest.raises(ImageError, match="over the limit"):
        open_image(Image.new("RGB", (100, 100)), max_pixels=99)


@pytest.mark.filterwarnings("ignore")
def test_damaged_files_only_ever_raise_image_error():
    """Bytes flipped and files cut short in many formats: open_image either returns an RGB
    image or raises ImageError, never anything else."""
    import random

    from geolocsft.images import _register_heif

    _register_heif()
    base = Image.effect_noise((40, 30), 50).convert("RGB")
    seeds = []
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP", "HEIF"):
        buffer = io.BytesIO()
        base.save(buffer, fmt)
        seeds.append(buffer.getvalue())
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        try:
            assert open_image(bytes(data)).mode == "RGB"
        except ImageError:
            pass


def test_too_elongated_for_qwen_is_an_image_error(tmp_path):
    path = saved(tmp_path, Image.new("RGB", (1000, 2)), "strip.png")
    with pytest.raises(ImageError, match="aspect ratio over 200:1") as info:
        prepare_image(path, default_budget("qwen2.5-vl"))
    assert info.value.path == str(path)
    assert prepare_image(path, default_budget("gemma3")).size == (896, 896)
