"""LiteRT (``ai-edge-litert``, XNNPACK kernels) for the networks it runs faster than TensorFlow on a CPU.

Used for MTCNN's PNet (:class:`core.detect.LitePNet`), about 3.5x faster than TensorFlow on a 2-core AVX2
CPU (README, "Speed"). ``AGEGENDER_LITERT=0`` switches LiteRT off; where ``ai-edge-litert`` has no wheel,
everything runs in TensorFlow.
"""

from __future__ import annotations

import os


def enabled() -> bool:
    """Whether LiteRT is installed and not switched off with ``AGEGENDER_LITERT=0``."""
    if os.environ.get("AGEGENDER_LITERT", "").strip() == "0":
        return False
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def convert(function) -> bytes:
    """A LiteRT flatbuffer of a ``tf.function`` with one ``input_signature``.

    The function itself is the converter's trackable object: given a Keras 3 model instead, the converter
    treats the weights as uninitialised variables and the converted network outputs NaN.
    """
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function).convert()
