"""What the machine can do fast."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 math (AVX512-BF16 or AMX-BF16), Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_policy_available() -> bool:
    """Whether ``mixed_bfloat16`` will be fast here: a bf16 CPU or any visible GPU."""
    if cpu_supports_bf16():
        return True
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
