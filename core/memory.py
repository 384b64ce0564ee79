"""The process's memory: resident size, the C allocator's own account, and its free memory handed back.

glibc's malloc keeps memory that the program has freed in its arenas for the next allocation; after a photo's
analysis (a decoded image, its pyramid, the networks' outputs: tens of MB) much of it stays resident without
being used. :func:`trim` hands it back to the system (``malloc_trim``); elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, where this process runs on it (``malloc_trim`` and ``mallinfo2`` are glibc's)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Hand the allocator's free memory back to the system (glibc's ``malloc_trim(0)``); False elsewhere."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))


def allocator_mb() -> dict[str, float] | None:
    """glibc's account of its heap, in MB: ``in_use`` (allocated by the program), ``free`` (freed, kept in the
    arenas), ``mmapped`` (large blocks mapped one by one, returned when freed); None elsewhere."""
    libc = _libc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return {"in_use": info.uordblks / 1e6, "free": info.fordblks / 1e6, "mmapped": info.hblkhd / 1e6}


def rss_mb(pid: int | None = None) -> tuple[float, float]:
    """Resident set size and its peak so far (VmHWM) of process ``pid`` (default: this one), in MB; zeros
    where ``/proc`` cannot tell."""
    try:
        lines = Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines()
    except OSError:
        return 0.0, 0.0
    kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v.strip().endswith("kB")}
    return kb.get("VmRSS", 0) * 1024 / 1e6, kb.get("VmHWM", 0) * 1024 / 1e6
