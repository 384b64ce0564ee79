"""HTTP JSON API on the same ``core.analyze``: ``python -m core.api [--host 127.0.0.1] [--port 8000]``.

- ``POST /v1/analyze``: the image as multipart field ``image``, or as the raw request body. Query
  parameters ``min_face_size``, ``threshold``, ``align``. Answers ``{"faces": [FaceResult.as_dict(), ...],
  "image": {"width": W, "height": H}}``.
- ``GET /healthz``: liveness, whether the models are loaded, and what runs them (runtime, precision).
- ``GET /openapi.json``, ``GET /docs``: the schema.

Bad input is a 4xx JSON error ``{"error": code, "detail": message}``, never a 500. Images are analysed in
memory and never stored or logged.

Admission is bounded: at most ``max_queue`` analyze requests are in flight or waiting at once (``--max-queue``,
or the environment variable ``AGEGENDER_API_MAX_QUEUE``; default 32). A request over that bound is answered at
once, before its body is read, with ``503 {"error": "busy", "detail": ...}`` and a ``Retry-After`` header, so
an overload sheds requests explicitly instead of piling up bodies and decoded images in memory. Admitted
requests are decoded and analysed on ``--workers`` threads of the app's own (AGEGENDER_API_WORKERS, default 1:
the detector and the models run one image at a time behind their locks, so more threads add little but
memory; see :func:`create_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from core.errors import InvalidImage, ModelNotFound
from core.image import MAX_BYTES, load_image
from core.models import load_models
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD, prepare
from core.pipeline import analyze as analyze_image
from core.results import FaceResult

#: Largest request accepted, in bytes (the image plus multipart overhead).
MAX_REQUEST_BYTES = MAX_BYTES + 64 * 1024

#: Analyze requests in flight or waiting at once, unless ``--max-queue`` or AGEGENDER_API_MAX_QUEUE says.
DEFAULT_MAX_QUEUE = 32
MAX_QUEUE_ENV = "AGEGENDER_API_MAX_QUEUE"

#: Threads that decode and analyse images, unless ``--workers`` or AGEGENDER_API_WORKERS says.
DEFAULT_WORKERS = 1
WORKERS_ENV = "AGEGENDER_API_WORKERS"

#: Seconds a client told "busy" should wait before it retries (the ``Retry-After`` header).
RETRY_AFTER_S = 1

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string", "format": "binary"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "400": {"description": "Not a readable image, or no image sent"},
        "413": {"description": "Request too large"},
        "503": {"description": "Busy (error \"busy\": the request queue is full; retry after the Retry-After "
                               "header's seconds), or the models are not installed (error \"models_missing\")"},
    },
}


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail}, headers=headers)


class Admission:
    """A bound on the requests in flight or waiting: :meth:`try_enter` admits one if fewer than ``limit`` are
    inside, else refuses at once (never waits). Thread-safe: requests may come from several event loops."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the queue bound must be at least 1, not {limit}")
        self.limit = limit
        self.inside = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.inside >= self.limit:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


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


def workers_setting(value: int | None = None) -> int:
    """``value``, else the environment variable AGEGENDER_API_WORKERS, else :data:`DEFAULT_WORKERS`."""
    workers = _int_setting(value, WORKERS_ENV, DEFAULT_WORKERS)
    if workers < 1:
        raise ValueError(f"the number of workers must be at least 1, not {workers}")
    return workers


def decode_and_analyze(data: bytes, **options: Any) -> tuple[tuple[int, int], list[FaceResult]]:
    """Decode the uploaded bytes and analyse them: ((width, height), faces)."""
    rgb = load_image(data, name="the uploaded image")
    return (int(rgb.shape[1]), int(rgb.shape[0])), analyze_image(rgb, **options)


def create_app(models_dir: str | Path | None = None, *, max_queue: int | None = None,
               workers: int | None = None) -> FastAPI:
    """The API on the models in ``models_dir`` (default: ``models/`` or AGEGENDER_MODELS_DIR), admitting at
    most ``max_queue`` analyze requests at once (default: :func:`max_queue_setting`), decoding and analysing
    them on ``workers`` threads of its own (default: :func:`workers_setting`).

    Why threads of its own: the detector and the models run one image at a time anyway (each behind a lock),
    and every thread that decodes and analyses photos keeps a malloc arena of its own with hundreds of MB
    of freed buffers. On Starlette's shared thread pool (up to 40 threads) 16 concurrent clients took the
    server from 1.1 GB to 4 GB. On one thread of its own it stays flat at about 1.7 GB; two threads (which
    overlap one image's decoding and cropping with another's detection or model call) stayed under 2.2 GB
    but moved between 1.7 and 2.1 GB (``python -m bench.load``, README).
    """
    admission = Admission(max_queue_setting(max_queue))
    executor = ThreadPoolExecutor(max_workers=workers_setting(workers), thread_name_prefix="analyze")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Age & gender API", version="1", lifespan=lifespan,
                  description="Faces, apparent age and gender probability for a photo.")
    app.state.admission = admission
    app.state.executor = executor

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        try:
            models = load_models(models_dir)
            return {"status": "ok", "models": "loaded", "runtime": models.runtime, "precision": models.precision}
        except ModelNotFound as exc:
            return {"status": "degraded", "models": str(exc)}

    @app.post("/v1/analyze", openapi_extra=_IMAGE_BODY)
    async def analyze(
        request: Request,
        min_face_size: int = Query(DEFAULT_MIN_FACE_SIZE, ge=8, le=4096),
        threshold: float = Query(DEFAULT_THRESHOLD, ge=0.0, le=1.0),
        align: bool = Query(True),
    ):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
            return error(413, "too_large", f"request is {int(declared) / 2**20:.1f} MiB; the limit is "
                                           f"{MAX_BYTES // 2**20} MiB")
        # Admitted before the body is read: a refused request costs no body and no decoded image.
        if not admission.try_enter():
            return error(503, "busy", f"{admission.limit} requests are already in flight or waiting; retry in "
                                      f"{RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await _analyze(request, min_face_size, threshold, align)
        finally:
            admission.leave()

    async def _analyze(request: Request, min_face_size: int, threshold: float, align: bool):
        data = await _read_image_bytes(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            # Off the event loop: the first request loads the models (seconds), and other requests (health
            # checks, refusals) must still be answered meanwhile. Later calls return the cached models.
            models = await asyncio.to_thread(prepare, models_dir)
        except ModelNotFound as exc:
            return error(503, "models_missing", str(exc))
        work = partial(decode_and_analyze, data, min_face_size=min_face_size, threshold=threshold, align=align,
                       models=models)
        try:
            (width, height), faces = await asyncio.get_running_loop().run_in_executor(executor, work)
        except InvalidImage as exc:
            return error(400, "invalid_image", str(exc))
        return {"faces": [f.as_dict() for f in faces], "image": {"width": width, "height": height}}

    return app


async def _read_image_bytes(request: Request) -> bytes | JSONResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_part_size=MAX_REQUEST_BYTES)
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the client's error
            return error(400, "bad_request", f"could not parse the multipart body: {exc}")
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return error(400, "missing_image", "send the photo as the multipart file field 'image'")
        data = await upload.read(MAX_REQUEST_BYTES + 1)
    else:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_REQUEST_BYTES:
                break
        data = bytes(data)
    if len(data) > MAX_BYTES:
        return error(413, "too_large", f"the image is larger than {MAX_BYTES // 2**20} MiB")
    if not data:
        return error(400, "missing_image", "no image sent: POST the photo as multipart field 'image' or as "
                                           "the raw body")
    return data


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--models-dir")
    parser.add_argument("--max-queue", type=_positive_int,
                        help=f"analyze requests in flight or waiting before new ones get 503 busy (default: "
                             f"{MAX_QUEUE_ENV} or {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--workers", type=_positive_int,
                        help=f"threads that decode and analyse images (default: {WORKERS_ENV} or {DEFAULT_WORKERS})")
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    app = create_app(args.models_dir, max_queue=args.max_queue, workers=args.workers)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
