"""Previews decode at reduced size (issue 14): a big JPEG is decoded through draft() (a fraction
of its pixels), oriented upright, within the requested size; over-large non-JPEG images are
refused with one line instead of being decoded in full."""

import pytest
from PIL import Image

from geolocsft.images import ImageError, open_preview


def big_jpeg(path, size=(4000, 3000), orientation=None):
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(path, "JPEG", quality=80, exif=exif.tobytes())
    return path


def test_jpeg_preview_is_drafted_small_and_upright(tmp_path, monkeypatch):
    path = big_jpeg(tmp_path / "big.jpg", orientation=6)  # stored landscape, shown portrait
    decoded = []
    real_load = Image.Image.load

    def spy(self):
        if getattr(self, "format", None) == "JPEG":
            decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    preview = open_preview(path, 128)
    assert max(preview.size) <= 128 and preview.mode == "RGB"
    assert preview.height > preview.width  # EXIF orientation 6 applied
    assert decoded and max(w * h for w, h in decoded) <= 4000 * 3000 // 64  # 1/8 scale
    # The preview pane's size still gets enough pixels.
    assert max(open_preview(path, 1400).size) == 1400


def test_over_large_non_jpeg_is_refused_not_decoded(tmp_path):
    from geolocsft.images import PREVIEW_MAX_PIXELS
    from tests.fixtures.images import png_header_only

    side = int(PREVIEW_MAX_PIXELS ** 0.5) + 10
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(ImageError, match="huge.png: image is .* too large to preview"):
        open_preview(path, 128)
