"""Property-based decoding: whatever the bytes, ``load_image`` gives a contiguous H x W x 3 uint8 array or
raises ``core.InvalidImage``, never anything else. The long run is ``python tests/fuzz_decode.py --n 10000``."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import core
from core.image import MAX_PIXELS, load_image

#: Bounded in-suite runs; no example database written into the repository.
FAST = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bases(astronaut) -> dict[str, bytes]:
    """The astronaut encoded in every supported format: full size JPEG and PNG, 64 px thumbnails."""
    full = Image.fromarray(astronaut)
    small = full.resize((64, 64))
    frames = [small.quantize(64), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(64)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "full.jpg": encode(full, "JPEG", quality=90),
        "full.png": encode(full, "PNG"),
        "small.jpg": encode(small, "JPEG", quality=90, exif=exif),
        "small_progressive.jpg": encode(small, "JPEG", progressive=True),
        "small.png": encode(small.convert("RGBA"), "PNG"),
        "small16.png": encode(Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257), "PNG"),
        "small.webp": encode(small, "WEBP"),
        "small.bmp": encode(small, "BMP"),
        "small.tif": encode(small, "TIFF"),
        "small_lzw.tif": encode(small, "TIFF", compression="tiff_lzw"),
        "anim.gif": buf.getvalue(),
    }


def decodes_or_invalid(data: bytes) -> np.ndarray | None:
    """The property: a contiguous H x W x 3 uint8 array within the pixel limit, or InvalidImage (None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = load_image(data)
    except core.InvalidImage as exc:
        assert str(exc)
        return None
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3 and out.shape[0] >= 1 and out.shape[1] >= 1
    assert out.flags.c_contiguous
    assert out.shape[0] * out.shape[1] <= MAX_PIXELS
    return out


def mutate(data: bytes, edits: list[tuple[float, int]], cut: float | None, header_only: bool) -> bytes:
    b = bytearray(data)
    span = min(len(b), 300) if header_only else len(b)
    for where, value in edits:
        b[min(int(where * span), len(b) - 1)] = value
    if cut is not None:
        b = b[: int(cut * len(b))]
    return bytes(b)


EDITS = st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 255)), max_size=20)
CUT = st.none() | st.floats(0, 1, allow_nan=False)


@FAST
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    decodes_or_invalid(data)


@FAST
@given(prefix=st.sampled_from([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM",
                               b"II*\0", b"MM\0*", b"8BPS", b"\0\0\1\0", b"P6\n"]),
       data=st.binary(max_size=2048))
def test_magic_number_then_garbage(prefix, data):
    decodes_or_invalid(prefix + data)


@FAST
@given(key=st.sampled_from(["full.jpg", "full.png", "small.jpg", "small_progressive.jpg", "small.png", "small16.png",
                            "small.webp", "small.bmp", "small.tif", "small_lzw.tif", "anim.gif"]),
       edits=EDITS, cut=CUT, header_only=st.booleans())
def test_mutated_and_truncated_encodings(bases, key, edits, cut, header_only):
    decodes_or_invalid(mutate(bases[key], edits, cut, header_only))


def png_claiming(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@settings(max_examples=100, deadline=None, database=None)
@given(width=st.integers(0, 2**32 - 1) | st.integers(0, 12_000),
       height=st.integers(0, 2**32 - 1) | st.integers(0, 12_000),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255]), color=st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
def test_png_header_lies(width, height, depth, color):
    """A small PNG whose header claims any size and pixel format: never decoded past the pixel limit."""
    out = decodes_or_invalid(png_claiming(width, height, depth, color))
    if out is not None:
        assert out.shape[:2] == (height, width)


# --- regressions found by tests/fuzz_decode.py ---------------------------------------------------------------


def two_frame_gif(astronaut) -> bytes:
    small = Image.fromarray(astronaut).resize((64, 64))
    frames = [small.quantize(64), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(64)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def test_animated_gif_truncated_after_the_first_frame(astronaut):
    """Pillow raised IndexError / struct.error while probing for a second frame (``is_animated``) when the
    file ends inside it. Every truncation is now a clear error or, once the first frame is complete, that
    frame (the one the app uses)."""
    gif = two_frame_gif(astronaut)
    first = load_image(gif)
    decoded = [cut for cut in range(len(gif)) if (out := decodes_or_invalid(gif[:cut])) is not None
               and np.array_equal(out, first)]
    assert decoded and decoded[-1] == len(gif) - 1  # the first frame alone is enough


@pytest.mark.parametrize("tiff_type", [2, 5, 11, 12])  # ASCII, RATIONAL, FLOAT, DOUBLE
def test_tiff_strip_offsets_of_the_wrong_type(astronaut, tiff_type):
    """Pillow raised TypeError ('float' object cannot be interpreted as an integer) from ``load``."""
    data = bytearray(encode(Image.fromarray(astronaut).resize((64, 64)), "TIFF"))
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    entries = [ifd + 2 + 12 * k for k in range(count)]
    strip = next(e for e in entries if struct.unpack("<H", data[e:e + 2])[0] == 273)  # StripOffsets
    data[strip + 2:strip + 4] = struct.pack("<H", tiff_type)
    with pytest.raises(core.InvalidImage, match="damaged"):
        load_image(bytes(data))


def test_fuzz_script_smoke(capsys):
    """The standalone fuzzer runs and finds nothing in a few hundred inputs."""
    import fuzz_decode

    code = fuzz_decode.main(["--n", "300", "--seed", "7"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 300 and summary["decoded"] + summary["invalid"] == 300
    assert code == 0 and summary["other"] == 0


# --- through the whole pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_models):
    from core.models import load_models

    return load_models(tiny_models)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(["full.jpg", "full.png", "small.jpg", "small.webp", "anim.gif"]), edits=EDITS, cut=CUT)
def test_analyze_gives_a_list_or_invalid_image(bases, models, key, edits, cut):
    data = mutate(bases[key], edits, cut, header_only=False)
    try:
        faces = core.analyze(data, models=models)
    except core.InvalidImage:
        return
    assert isinstance(faces, list) and all(isinstance(f, core.FaceResult) for f in faces)
