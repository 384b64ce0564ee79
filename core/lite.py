"""LiteRT (``ai-edge-litert``, XNNPACK kernels) for the networks it runs faster than TensorFlow on a CPU.

Used for MTCNN's three networks (:class:`core.mtcnn_lite.LiteNet`): PNet about 3.5x faster than TensorFlow on
a 2-core AVX2 CPU (docs/speed.md), and with MTCNN's stages in NumPy (:mod:`core.mtcnn_lite`) detection needs no
TensorFlow at all. ``AGEGENDER_LITERT=0`` switches LiteRT off; where ``ai-edge-litert`` has no wheel, MTCNN runs
as its package runs it, in TensorFlow. Converted networks are stored in a cache folder (:func:`cache_dir`), so a
process converts only what no earlier process on the machine has converted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Set to 1 to keep LiteRT's own messages on stderr (``python -m core --verbose`` does).
VERBOSE_ENV = "AGEGENDER_VERBOSE"
_quiet_lock = threading.Lock()
_delegate_announced = False


def enabled() -> bool:
    """Whether LiteRT is installed and not switched off with ``AGEGENDER_LITERT=0``."""
    if os.environ.get("AGEGENDER_LITERT", "").strip() == "0":
        return False
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def convert(function) -> bytes:
    """A LiteRT flatbuffer of a ``tf.function`` with one ``input_signature``.

    The function itself is the converter's trackable object: given a Keras 3 model instead, the converter
    treats the weights as uninitialised variables and the converted network outputs NaN.
    """
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function).convert()


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """The process's stderr (file descriptor 2) sent to the null device while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def allocate_quietly(interpreter) -> None:
    """``interpreter.allocate_tensors()`` without LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for
    CPU." line, which its C++ logger writes once per process straight to file descriptor 2 (no environment
    variable or Python setting turns it off). So the first allocation runs with that descriptor on the null
    device, for the milliseconds it takes; later ones print nothing anyway. With AGEGENDER_VERBOSE=1 the line
    stays."""
    global _delegate_announced
    if _delegate_announced or os.environ.get(VERBOSE_ENV, "").strip() == "1":
        interpreter.allocate_tensors()
        return
    with _quiet_lock:
        if _delegate_announced:
            interpreter.allocate_tensors()
            return
        with _stderr_silenced():  # an error is raised, not printed: nothing of it is lost
            interpreter.allocate_tensors()
        _delegate_announced = True


def cache_dir() -> Path:
    """``AGEGENDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/agegender`` (``~/.cache/agegender``)."""
    explicit = os.environ.get("AGEGENDER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agegender"


def cached_flatbuffer(name: str, make: Callable[[], bytes]) -> bytes:
    """The flatbuffer stored as ``name`` in :func:`cache_dir`, or ``make()``'s, then stored there.

    ``name`` must change whenever the network would (its weights, the converter). A cached file that LiteRT
    cannot load is made again; a cache folder that cannot be written only costs the conversion next time.
    """
    from ai_edge_litert.interpreter import Interpreter

    path = cache_dir() / name
    try:
        data = path.read_bytes()
        Interpreter(model_content=data)
        return data
    except (OSError, ValueError, RuntimeError):
        pass
    data = make()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{name}.", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
    return data
