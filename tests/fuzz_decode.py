"""Fuzz ``core.image.load_image`` without hypothesis: ``python tests/fuzz_decode.py --n 10000 --seed 0``.

Generates N inputs from a seeded RNG: random bytes, random bytes behind a real magic number, byte mutations
and truncations of real JPEG / PNG / GIF / WebP / BMP / TIFF encodings of the astronaut (skimage), and
"header lies" (PNG, JPEG, BMP, GIF, TIFF and WebP headers rewritten to claim other sizes). Each input goes
through ``load_image``; the outcome is one of

- ``decoded``: a contiguous H x W x 3 uint8 array (anything else is counted as ``bad_output``),
- ``invalid``: ``core.InvalidImage``,
- ``other``: any other exception, or longer than ``--timeout`` seconds: a bug. The input and its traceback
  are saved to ``--save-failures`` (if given).

Prints a one-line JSON summary; exit status 1 if any ``other`` or ``bad_output``, else 0.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from core.errors import InvalidImage
from core.image import load_image

MAGICS = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"RIFF\0\0\0\0WEBPVP8 ",
          b"RIFF\0\0\0\0WEBPVP8L", b"BM", b"II*\0", b"MM\0*", b"8BPS", b"\0\0\1\0", b"P6\n", b"%!PS-Adobe",
          b"\0\0\0\x0cjP  \r\n\x87\n", b"qoif", b"DDS ", b"icns", b"<svg", b"\x00\x00\x02\x00"]


class Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the decoder swallows it."""


def _alarm(signum, frame):
    raise Timeout()


def encodings(rng: np.random.Generator) -> dict[str, bytes]:
    """Real encodings of the astronaut (full size and a 64 px thumbnail) in every supported format."""
    from skimage import data

    full = Image.fromarray(np.ascontiguousarray(data.astronaut()))
    small = full.resize((64, 64))
    out: dict[str, bytes] = {}

    def save(key: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[key] = buf.getvalue()

    for tag, img in (("full", full), ("small", small)):
        save(f"{tag}.jpg", img, "JPEG", quality=90)
        save(f"{tag}.png", img, "PNG")
        save(f"{tag}.webp", img, "WEBP", quality=80)
        save(f"{tag}.bmp", img, "BMP")
        save(f"{tag}.tif", img, "TIFF")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("small_exif.jpg", small, "JPEG", exif=exif)
    save("small_progressive.jpg", small, "JPEG", progressive=True)
    save("small_cmyk.jpg", small.convert("CMYK"), "JPEG")
    save("small_gray.png", small.convert("L"), "PNG")
    save("small_rgba.png", small.convert("RGBA"), "PNG")
    save("small_p.png", small.convert("P"), "PNG")
    save("small_16.png", Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257), "PNG")
    save("small_lossless.webp", small, "WEBP", lossless=True)
    save("small_rgba.webp", small.convert("RGBA"), "WEBP")
    save("small_lzw.tif", small, "TIFF", compression="tiff_lzw")
    save("small_deflate.tif", small, "TIFF", compression="tiff_adobe_deflate")
    save("small_16.tif", Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257), "TIFF")
    save("small_f.tif", Image.fromarray(np.asarray(small.convert("L"), np.float32) / 255), "TIFF")
    save("small_rle.bmp", small.convert("P"), "BMP")
    frames = [small.quantize(64), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(64)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["small_anim.gif"] = buf.getvalue()
    save("small.gif", small, "GIF")
    buf = io.BytesIO()
    small.save(buf, format="TIFF", save_all=True, append_images=[small.convert("L")])
    out["small_multipage.tif"] = buf.getvalue()
    return out


# --- mutations ------------------------------------------------------------------------------------------------


def flip_bytes(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 21))):
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    return bytes(b)


def flip_header(rng, data: bytes) -> bytes:
    """Mutations in the first 300 bytes, where the headers are."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        b[int(rng.integers(0, min(len(b), 300)))] = int(rng.integers(0, 256))
    return bytes(b)


def overwrite_run(rng, data: bytes) -> bytes:
    b = bytearray(data)
    start = int(rng.integers(0, len(b)))
    n = int(rng.integers(1, 512))
    fill = rng.choice([b"\x00", b"\xff", None])
    chunk = bytes(rng.integers(0, 256, n, dtype=np.uint8)) if fill is None else fill * n
    b[start:start + n] = chunk[: len(b) - start]
    return bytes(b)


def insert_delete(rng, data: bytes) -> bytes:
    pos = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, 64))
    if rng.random() < 0.5:
        return data[:pos] + bytes(rng.integers(0, 256, n, dtype=np.uint8)) + data[pos:]
    return data[:pos] + data[pos + n:]


def truncate(rng, data: bytes) -> bytes:
    if rng.random() < 0.3:  # near the start, inside the headers
        return data[: int(rng.integers(0, min(len(data), 400)))]
    return data[: int(rng.integers(0, len(data)))]


def _dims(rng) -> tuple[int, int]:
    """A lie about the size: tiny, zero, huge, negative-as-unsigned, or just over the pixel limit."""
    choice = rng.integers(0, 6)
    if choice == 0:
        return 0, int(rng.integers(0, 100))
    if choice == 1:
        return int(rng.integers(1, 5)), int(rng.integers(1, 5))
    if choice == 2:
        return int(rng.integers(10_000, 70_000)), int(rng.integers(10_000, 70_000))
    if choice == 3:
        return 0xFFFFFFFF - int(rng.integers(0, 10)), int(rng.integers(1, 1000))
    if choice == 4:
        return 10_001, 10_001  # 100.02 MP: just over the limit
    return int(rng.integers(1, 3000)), int(rng.integers(1, 3000))


def _i32(v: int) -> int:
    return ((v & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


def lie_png(rng, data: bytes) -> bytes:
    w, h = _dims(rng)
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
    if rng.random() < 0.3:  # bit depth / colour type / interlace lies too
        ihdr[8 + int(rng.integers(0, 5))] = int(rng.integers(0, 256))
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    if rng.random() < 0.2:
        crc = b"\0\0\0\0"
    return data[:16] + bytes(ihdr) + crc + data[33:]


def lie_jpeg(rng, data: bytes) -> bytes:
    i = data.find(b"\xff\xc0")
    if i < 0:
        i = data.find(b"\xff\xc2")
    if i < 0:
        return flip_header(rng, data)
    w, h = _dims(rng)
    b = bytearray(data)
    b[i + 5:i + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
    if rng.random() < 0.3:  # component count / sampling lies
        b[i + 9 + int(rng.integers(0, 6))] = int(rng.integers(0, 256))
    return bytes(b)


def lie_bmp(rng, data: bytes) -> bytes:
    w, h = _dims(rng)
    b = bytearray(data)
    if rng.random() < 0.3:  # a negative height (top-down BMP), or signed overflow
        b[18:26] = struct.pack("<ii", _i32(w), _i32(-h))
    else:
        b[18:26] = struct.pack("<II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
    if rng.random() < 0.3:  # bits per pixel / compression lies
        b[28 + int(rng.integers(0, 8))] = int(rng.integers(0, 256))
    return bytes(b)


def lie_gif(rng, data: bytes) -> bytes:
    w, h = _dims(rng)
    b = bytearray(data)
    b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    i = data.find(b"\x2c", 13)
    if i > 0 and rng.random() < 0.5:
        b[i + 5:i + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    return bytes(b)


def lie_tiff(rng, data: bytes) -> bytes:
    """Rewrite the value of one IFD entry (width, length, bits, samples, strip offsets...) to a lie."""
    b = bytearray(data)
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    if ifd + 2 > len(data):
        return flip_header(rng, data)
    (count,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
    if count == 0:
        return flip_header(rng, data)
    k = int(rng.integers(0, count))
    entry = ifd + 2 + 12 * k
    if entry + 12 > len(data):
        return flip_header(rng, data)
    w, h = _dims(rng)
    part = rng.integers(0, 3)
    if part == 0:  # the value
        b[entry + 8:entry + 12] = struct.pack(endian + "I", w & 0xFFFFFFFF)
    elif part == 1:  # the count
        b[entry + 4:entry + 8] = struct.pack(endian + "I", h & 0xFFFFFFFF)
    else:  # the type
        b[entry + 2:entry + 4] = struct.pack(endian + "H", int(rng.integers(0, 20)))
    return bytes(b)


def lie_webp(rng, data: bytes) -> bytes:
    b = bytearray(data)
    if rng.random() < 0.5:  # the RIFF size
        b[4:8] = struct.pack("<I", int(rng.integers(0, 2**32)))
    else:
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(12, min(len(b), 40)))] = int(rng.integers(0, 256))
    return bytes(b)


LIARS: dict[str, Callable] = {"png": lie_png, "jpg": lie_jpeg, "bmp": lie_bmp, "gif": lie_gif, "tif": lie_tiff,
                              "webp": lie_webp}
MUTATORS: list[Callable] = [flip_bytes, flip_header, overwrite_run, insert_delete, truncate]


def generate(rng: np.random.Generator, bases: dict[str, bytes]) -> tuple[str, bytes]:
    """One input and the name of how it was made."""
    r = rng.random()
    if r < 0.08:
        return "random", bytes(rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8))
    if r < 0.16:
        magic = MAGICS[int(rng.integers(0, len(MAGICS)))]
        return "magic+random", magic + bytes(rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8))
    key = list(bases)[int(rng.integers(0, len(bases)))]
    data = bases[key]
    ext = key.rsplit(".", 1)[1]
    if r < 0.36:
        data = LIARS[ext](rng, data)
        kind = "lie"
        if rng.random() < 0.3:
            data = MUTATORS[int(rng.integers(0, len(MUTATORS)))](rng, data)
            kind = "lie+mutate"
        return f"{kind}:{key}", data
    mutator = MUTATORS[int(rng.integers(0, len(MUTATORS)))]
    data = mutator(rng, data)
    if rng.random() < 0.15:
        data = truncate(rng, data)
    return f"{mutator.__name__}:{key}", data


def check(data: bytes, timeout: float) -> tuple[str, str | None]:
    """("decoded" | "invalid" | "other" | "bad_output", detail)."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = load_image(data)
    except InvalidImage:
        return "invalid", None
    except Timeout:
        return "other", f"Timeout: took more than {timeout} s\n"
    except Exception:  # noqa: BLE001 - that is what we are looking for
        return "other", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            and out.flags.c_contiguous and out.shape[0] >= 1 and out.shape[1] >= 1):
        return "bad_output", f"{type(out).__name__} {getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}"
    return "decoded", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-failures", type=Path, help="folder for inputs that raised something else")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one input may take")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, _alarm)
    rng = np.random.default_rng(args.seed)
    bases = encodings(rng)
    counts = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    other_types = collections.Counter()
    slowest = (0.0, "")
    started = time.perf_counter()
    for i in range(args.n):
        kind, data = generate(rng, bases)
        t = time.perf_counter()
        outcome, detail = check(data, args.timeout)
        took = time.perf_counter() - t
        if took > slowest[0]:
            slowest = (took, kind)
        counts[outcome] += 1
        by_kind[kind.split(":")[0]][outcome] += 1
        if detail is not None and outcome != "invalid":
            last = detail.strip().splitlines()[-1]
            other_types[last.split(":")[0]] += 1
            if args.save_failures:
                args.save_failures.mkdir(parents=True, exist_ok=True)
                stem = f"{i:06d}_{kind.replace(':', '_')}"
                (args.save_failures / f"{stem}.bin").write_bytes(data)
                (args.save_failures / f"{stem}.txt").write_text(detail)
    summary = {
        "n": args.n, "seed": args.seed, "decoded": counts["decoded"], "invalid": counts["invalid"],
        "other": counts["other"], "bad_output": counts["bad_output"], "other_types": dict(other_types),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "seconds": round(time.perf_counter() - started, 1),
        "slowest": {"seconds": round(slowest[0], 2), "kind": slowest[1]},
    }
    print(json.dumps(summary))
    return 1 if counts["other"] or counts["bad_output"] else 0


if __name__ == "__main__":
    sys.exit(main())
