"""How much the HTTP API (:mod:`core.api`) takes in at once: the bound on requests in flight or waiting and on
the bytes of their bodies (:class:`Admission`, charged as bodies arrive by :class:`Charge`), and the settings
that size it, from the command line's flags or the environment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator

from core.image import MAX_BYTES, MAX_PIXELS

#: Largest request accepted, in bytes (the image plus multipart overhead).
MAX_REQUEST_BYTES = MAX_BYTES + 64 * 1024

#: Analyze requests in flight or waiting at once, unless ``--max-queue`` or AGEGENDER_API_MAX_QUEUE says.
DEFAULT_MAX_QUEUE = 32
MAX_QUEUE_ENV = "AGEGENDER_API_MAX_QUEUE"

#: MiB of request bodies in flight or waiting at once, unless ``--max-queue-mb`` or AGEGENDER_API_MAX_QUEUE_MB
#: says (a body is a photo as sent, compressed: 32 photos of 2 MiB fit).
DEFAULT_MAX_QUEUE_MB = 64
MAX_QUEUE_MB_ENV = "AGEGENDER_API_MAX_QUEUE_MB"

#: Largest photo decoded, in megapixels, unless ``--max-megapixels`` or AGEGENDER_API_MAX_MEGAPIXELS says: the
#: library's own limit. Decoding takes about 14 bytes a pixel at its peak (docs/memory.md): on a 1 GB machine,
#: 24 MP (340 MB) is a safer bound.
DEFAULT_MAX_MEGAPIXELS = MAX_PIXELS // 1_000_000
MAX_MEGAPIXELS_ENV = "AGEGENDER_API_MAX_MEGAPIXELS"

#: Threads that decode and analyse images, unless ``--workers`` or AGEGENDER_API_WORKERS says.
DEFAULT_WORKERS = 1
WORKERS_ENV = "AGEGENDER_API_WORKERS"

#: Seconds a client told "busy" should wait before it retries (the ``Retry-After`` header).
RETRY_AFTER_S = 1


class Admission:
    """A bound on the requests in flight or waiting and on the bytes of their bodies: :meth:`try_enter` admits
    one if fewer than ``limit`` are inside and its declared bytes fit ``max_bytes``, else refuses at once
    (never waits); :meth:`try_grow` charges bytes that arrive beyond those declared. A request alone is never
    refused for its bytes (the request size limit bounds it). Thread-safe: requests may come from several
    event loops."""

    def __init__(self, limit: int, max_bytes: int = DEFAULT_MAX_QUEUE_MB * 2**20):
        if limit < 1:
            raise ValueError(f"the queue bound must be at least 1, not {limit}")
        if max_bytes < 1:
            raise ValueError(f"the queue's byte budget must be positive, not {max_bytes}")
        self.limit = limit
        self.max_bytes = max_bytes
        self.inside = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def try_enter(self, nbytes: int = 0) -> bool:
        with self._lock:
            if self.inside >= self.limit or (self.inside and self.bytes + nbytes > self.max_bytes):
                return False
            self.inside += 1
            self.bytes += nbytes
            return True

    def try_grow(self, nbytes: int) -> bool:
        """Charge ``nbytes`` more to a request inside; False (nothing charged) where they do not fit."""
        with self._lock:
            if self.inside > 1 and self.bytes + nbytes > self.max_bytes:
                return False
            self.bytes += nbytes
            return True

    def leave(self, nbytes: int = 0) -> None:
        """A request leaves, with the ``nbytes`` charged to it."""
        with self._lock:
            self.inside -= 1
            self.bytes -= nbytes


class Busy(Exception):
    """A request's body outgrew the queue's byte budget while it arrived."""


class TooLarge(Exception):
    """A request's body passed :data:`MAX_REQUEST_BYTES` while it arrived."""


class Charge:
    """The bytes charged to one admitted request; :meth:`counted` charges a body's chunks as they arrive."""

    def __init__(self, admission: Admission, declared: int):
        self.admission = admission
        self.bytes = declared
        self.received = 0

    async def counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in stream:
            self.received += len(chunk)
            if self.received > MAX_REQUEST_BYTES:
                raise TooLarge
            if self.received > self.bytes:
                if not self.admission.try_grow(self.received - self.bytes):
                    raise Busy
                self.bytes = self.received
            yield chunk


def _int_setting(value: int | None, env: str, default: int) -> int:
    if value is not None:
        return value
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a whole number") from None


def max_queue_setting(value: int | None = None) -> int:
    """``value``, else the environment variable AGEGENDER_API_MAX_QUEUE, else :data:`DEFAULT_MAX_QUEUE`."""
    return _int_setting(value, MAX_QUEUE_ENV, DEFAULT_MAX_QUEUE)


def max_queue_mb_setting(value: int | None = None) -> int:
    """``value``, else AGEGENDER_API_MAX_QUEUE_MB, else :data:`DEFAULT_MAX_QUEUE_MB`."""
    mb = _int_setting(value, MAX_QUEUE_MB_ENV, DEFAULT_MAX_QUEUE_MB)
    if mb < 1:
        raise ValueError(f"the queue's byte budget must be at least 1 MiB, not {mb}")
    return mb


def max_megapixels_setting(value: int | None = None) -> int:
    """``value``, else AGEGENDER_API_MAX_MEGAPIXELS, else :data:`DEFAULT_MAX_MEGAPIXELS`."""
    mp = _int_setting(value, MAX_MEGAPIXELS_ENV, DEFAULT_MAX_MEGAPIXELS)
    if mp < 1:
        raise ValueError(f"the megapixel limit must be at least 1, not {mp}")
    return mp


def workers_setting(value: int | None = None) -> int:
    """``value``, else the environment variable AGEGENDER_API_WORKERS, else :data:`DEFAULT_WORKERS`."""
    workers = _int_setting(value, WORKERS_ENV, DEFAULT_WORKERS)
    if workers < 1:
        raise ValueError(f"the number of workers must be at least 1, not {workers}")
    return workers
