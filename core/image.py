"""Decode anything that holds a picture into an RGB uint8 array.

Accepted: bytes, a file path (``str`` / ``Path``), a file-like object, a PIL image, or a NumPy array
(H x W x 3 RGB uint8, also grayscale and RGBA). EXIF orientation is applied; every PIL mode (RGBA, LA, P,
grayscale, CMYK, 16-bit, float) becomes 8-bit RGB; transparent areas are laid on white. Images with more
than :data:`MAX_PIXELS` pixels are refused before they are decoded (decompression bombs).
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageTooLarge, InvalidImage

#: Largest image accepted, in pixels (about 100 megapixels: a 50 MP phone photo passes).
MAX_PIXELS = 100_000_000

#: Largest file accepted, in bytes.
MAX_BYTES = 64 * 1024 * 1024

ImageInput = bytes | bytearray | memoryview | str | Path | IO[bytes] | Image.Image | np.ndarray

SUPPORTED = "JPEG, PNG, WebP, BMP, GIF or TIFF"
#: File name endings of :data:`SUPPORTED` (the app's uploader accepts these; a GIF's first frame is used).
SUPPORTED_SUFFIXES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


def load_image(source: ImageInput, *, name: str | None = None) -> np.ndarray:
    """Return ``source`` as a contiguous H x W x 3 RGB uint8 array.

    Raises:
        InvalidImage: empty input, not an image, truncated or corrupt data, or too many pixels.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "the image")
    if isinstance(source, np.ndarray):
        return _from_array(source, label)
    if isinstance(source, Image.Image):
        return _from_pil(source, label)
    data = _read_bytes(source, label)
    if not data:
        raise InvalidImage(f"{label} is empty (0 bytes). Choose a photo file ({SUPPORTED}).")
    if len(data) > MAX_BYTES:
        raise ImageTooLarge(f"{label} is {len(data) / 2**20:.0f} MiB; the limit is {MAX_BYTES // 2**20} MiB. "
                           "Resize or recompress the photo.")
    try:
        with warnings.catch_warnings():
            # Our own limit (MAX_PIXELS, checked before decoding) replaces Pillow's warning at 89.5 MP;
            # Pillow's hard DecompressionBombError (about 179 MP) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img.size, label)
            return _from_pil(img, label)
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise InvalidImage(f"{label} is not a {SUPPORTED} image.") from None
        raise ImageTooLarge(f"{label} claims too many pixels. Use a photo under "
                           f"{MAX_PIXELS // 1_000_000} megapixels.") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as exc:
        # IndexError / TypeError / struct.error: Pillow's parsers raise these on some corrupt headers (found by
        # tests/fuzz_decode.py: a TIFF tag of the wrong type, an animated GIF cut inside a later frame).
        raise InvalidImage(f"{label} is damaged or truncated and cannot be decoded ({exc}). "
                           "Export or download it again.") from None


def _read_bytes(source: ImageInput, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImage(f"{path} does not exist or is not a file. Check the path.")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageTooLarge(f"{label} is {size / 2**20:.0f} MiB; the limit is {MAX_BYTES // 2**20} MiB. "
                               "Resize or recompress the photo.")
        return path.read_bytes()
    if hasattr(source, "read"):
        data = source.read(MAX_BYTES + 1)
        return bytes(data) if data else b""
    raise InvalidImage(f"cannot read an image from a {type(source).__name__}. Pass bytes, a path, "
                       "a PIL image or an RGB uint8 array.")


def _check_pixels(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InvalidImage(f"{label} has no pixels ({w}x{h}).")
    if w * h > MAX_PIXELS:
        raise ImageTooLarge(f"{label} is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is "
                           f"{MAX_PIXELS // 1_000_000}. Resize the photo first.")


def _from_pil(img: Image.Image, label: str) -> np.ndarray:
    _check_pixels(img.size, label)
    if img.tell() != 0:  # the first frame; not ``is_animated``, which parses the later frames too
        img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return _from_array(arr, label)
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _from_array(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidImage(f"{label}: expected an H x W x 3 RGB array, got shape {arr.shape}.")
    _check_pixels((arr.shape[1], arr.shape[0]), label)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)
