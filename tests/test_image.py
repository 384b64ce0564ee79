"""Decoding: every input kind becomes RGB uint8, every bad input raises InvalidImage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import encode, png_claiming
from core import InvalidImage
from core.image import MAX_PIXELS, load_image


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is a text file renamed to photo.jpg\n",
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
])
def test_not_an_image(data):
    with pytest.raises(InvalidImage):
        load_image(data)


def test_truncated_jpeg(astronaut_jpeg):
    with pytest.raises(InvalidImage, match="truncated|damaged"):
        load_image(astronaut_jpeg[: len(astronaut_jpeg) // 2])


def test_corrupt_png(astronaut):
    data = bytearray(encode(Image.fromarray(astronaut), "PNG"))
    data[200:400] = b"\x00" * 200
    with pytest.raises(InvalidImage):
        load_image(bytes(data))


def test_decompression_bomb_rejected_before_decoding():
    assert MAX_PIXELS < 30000 * 30000
    with pytest.raises(InvalidImage, match="megapixels"):
        load_image(png_claiming(30000, 30000))


def test_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(InvalidImage, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImage):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(InvalidImage):
        load_image(np.zeros((4, 4, 7), np.uint8))


def test_invalid_image_is_a_value_error():
    assert issubclass(InvalidImage, ValueError)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(astronaut, mode):
    src = Image.fromarray(astronaut)
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(src.convert("L"), np.uint16) * 257)
    fmt = {"CMYK": "JPEG", "I;16": "PNG", "P": "PNG"}.get(mode, "PNG" if mode != "RGB" else "JPEG")
    out = load_image(encode(img, fmt))
    assert out.dtype == np.uint8 and out.shape == (512, 512, 3)
    if mode in ("RGB", "CMYK"):
        assert np.abs(out.astype(int) - astronaut.astype(int)).mean() < 12


def test_sixteen_bit_keeps_brightness(astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    img = Image.fromarray(gray.astype(np.uint16) * 257)
    assert img.mode == "I;16"
    out = load_image(encode(img, "PNG"))
    assert np.abs(out[..., 0].astype(int) - gray.astype(int)).max() <= 1


def test_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0
    out = load_image(encode(Image.fromarray(rgba), "PNG"))
    assert (out == 255).all()


def test_exif_orientation_applied(astronaut):
    img = Image.fromarray(astronaut[:, :400])  # 400 wide, 512 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(encode(img, "JPEG", exif=exif))
    assert out.shape == (400, 512, 3)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert out.shape == (16, 16, 3) and out[..., 0].mean() > 200


def test_sources_agree(astronaut, astronaut_jpeg, tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(astronaut_jpeg)
    from_bytes = load_image(astronaut_jpeg)
    assert np.array_equal(load_image(path), from_bytes)
    assert np.array_equal(load_image(str(path)), from_bytes)
    assert np.array_equal(load_image(io.BytesIO(astronaut_jpeg)), from_bytes)
    assert np.array_equal(load_image(Image.open(io.BytesIO(astronaut_jpeg))), from_bytes)
    assert np.array_equal(load_image(astronaut), astronaut)
    assert load_image(astronaut[..., 0]).shape == (512, 512, 3)
    assert load_image(astronaut.astype(np.float32) / 255).dtype == np.uint8
