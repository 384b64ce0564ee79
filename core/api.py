"""HTTP JSON API on the same ``core.analyze``: ``python -m core.api [--host 127.0.0.1] [--port 8000]``.

- ``POST /v1/analyze``: the image as multipart field ``image``, or as the raw request body. Query
  parameters ``min_face_size``, ``threshold``, ``align``. Answers the output contract's image,
  ``{"file", "status", "faces": [FaceResult.as_dict(), ...]}`` (:func:`core.results.image_dict`; ``file`` is the
  multipart file's name, else null), with ``"image": {"width": W, "height": H}``.
- ``GET /healthz``: liveness, whether the models are loaded, and what runs them (runtime, precision).
- ``GET /openapi.json``, ``GET /docs`` (Swagger UI), ``GET /redoc``: the schema, its pages served from this
  server's own files (:mod:`core.api_support`).

Bad input is a 4xx JSON error ``{"error": code, "detail": message}``, never a 500: an unknown path or method
and a bad query parameter too; an image over the byte or pixel limit is ``413 too_large``. Images are analysed
in memory and never stored or logged.

Admission is bounded: at most ``max_queue`` analyze requests are in flight or waiting at once (``--max-queue``,
or the environment variable ``AGEGENDER_API_MAX_QUEUE``; default 32), holding at most ``max_queue_mb`` MiB of
request bodies together (``--max-queue-mb``, AGEGENDER_API_MAX_QUEUE_MB; default 64; a request alone is
always admitted up to the 64 MiB limit). A request over either bound is answered at once with
``503 {"error": "busy", "detail": ...}`` and a ``Retry-After`` header: before its body is read where it
declares its length, else as soon as its body passes the budget. So an overload sheds requests explicitly
instead of piling up bodies in memory. Waiting requests hold the photo as it was sent (compressed); it is
decoded only by the thread that analyses it: admitted requests are decoded and analysed on ``--workers``
threads of the app's own (AGEGENDER_API_WORKERS, default 1: the detector and the models run one image at a
time behind their locks, so more threads add little but memory; see :func:`create_app`), and a photo of more
than ``--max-megapixels`` (AGEGENDER_API_MAX_MEGAPIXELS; default 100, the library's limit) is refused by its
header before it is decoded (413 ``too_large``, as the library's own pixel limit is). Decoding is the largest
memory a single photo takes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.formparsers import MultiPartParser

from core import memory
from core.api_limits import (
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_MB,
    DEFAULT_WORKERS,
    MAX_MEGAPIXELS_ENV,
    MAX_QUEUE_ENV,
    MAX_QUEUE_MB_ENV,
    MAX_REQUEST_BYTES,
    RETRY_AFTER_S,
    WORKERS_ENV,
    Admission,
    Busy,
    Charge,
    TooLarge,
    max_megapixels_setting,
    max_queue_mb_setting,
    max_queue_setting,
    workers_setting,
)
from core.api_support import error, install_error_bodies, install_offline_docs, serve
from core.errors import ImageTooLarge, InvalidImage, ModelNotFound
from core.image import MAX_BYTES, load_image
from core.models import load_models
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD, prepare
from core.pipeline import analyze as analyze_image
from core.results import FaceResult, image_dict

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
        "413": {"description": "Request too large, or an image of more pixels than the limit (error \"too_large\")"},
        "503": {"description": "Busy (error \"busy\": the request queue is full; retry after the Retry-After "
                               "header's seconds), or the models are not installed (error \"models_missing\")"},
    },
}


def check_megapixels(data: bytes, max_megapixels: int) -> None:
    """Refuse (:class:`ImageTooLarge`) a photo of more than ``max_megapixels`` by its header, before decoding it;
    what is not a readable header is left to :func:`core.image.load_image` to report."""
    try:
        w, h = Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - load_image says what is wrong with it
        return
    if w * h > max_megapixels * 1_000_000:
        raise ImageTooLarge(f"the uploaded image is {w}x{h} = {w * h / 1e6:.0f} megapixels; this server takes at most "
                           f"{max_megapixels}. Resize the photo first.")


def decode_and_analyze(data: bytes, *, max_megapixels: int = DEFAULT_MAX_MEGAPIXELS,
                       **options: Any) -> tuple[tuple[int, int], list[FaceResult]]:
    """Decode the uploaded bytes (at most ``max_megapixels``) and analyse them: ((width, height), faces)."""
    if max_megapixels < DEFAULT_MAX_MEGAPIXELS:
        check_megapixels(data, max_megapixels)
    rgb = load_image(data, name="the uploaded image")
    return (int(rgb.shape[1]), int(rgb.shape[0])), analyze_image(rgb, **options)


def analyze_and_trim(data: bytes, **options: Any) -> tuple[tuple[int, int], list[FaceResult]]:
    """:func:`decode_and_analyze`, then the memory its photo took handed back to the system
    (:func:`core.memory.trim`, about 1 ms): the server's RSS stays at its floor between photos."""
    try:
        return decode_and_analyze(data, **options)
    finally:
        memory.trim()


def create_app(models_dir: str | Path | None = None, *, max_queue: int | None = None,
               workers: int | None = None, max_queue_mb: int | None = None,
               max_megapixels: int | None = None) -> FastAPI:
    """The API on the models in ``models_dir`` (default: ``models/`` or AGEGENDER_MODELS_DIR), admitting at
    most ``max_queue`` analyze requests (default: :func:`max_queue_setting`) with at most ``max_queue_mb`` MiB
    of bodies (default: :func:`max_queue_mb_setting`) at once, decoding and analysing them on ``workers``
    threads of its own (default: :func:`workers_setting`), photos of at most ``max_megapixels`` (default:
    :func:`max_megapixels_setting`).

    Why threads of its own: the detector and the models run one image at a time anyway (each behind a lock),
    and every thread that decodes and analyses photos keeps a malloc arena of its own with hundreds of MB
    of freed buffers. On Starlette's shared thread pool (up to 40 threads) 16 concurrent clients took the
    server from 1.1 GB to 4 GB. On one thread of its own it stays flat at about 1.7 GB; two threads (which
    overlap one image's decoding and cropping with another's detection or model call) stayed under 2.2 GB
    but moved between 1.7 and 2.1 GB (``python -m bench.load``, docs/speed.md).
    """
    admission = Admission(max_queue_setting(max_queue), max_queue_mb_setting(max_queue_mb) * 2**20)
    megapixels = max_megapixels_setting(max_megapixels)
    executor = ThreadPoolExecutor(max_workers=workers_setting(workers), thread_name_prefix="analyze")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Age & gender API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Faces, apparent age and female probability for a photo.")
    install_error_bodies(app)
    install_offline_docs(app)
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
        header = request.headers.get("content-length", "")
        declared = int(header) if header.isdigit() else 0
        if declared > MAX_REQUEST_BYTES:
            return too_large(declared)
        # Admitted before the body is read where it declares its length: a refused request costs no body.
        if not admission.try_enter(declared):
            return busy(admission)
        charge = Charge(admission, declared)
        try:
            return await _analyze(request, charge, min_face_size, threshold, align)
        except Busy:
            return busy(admission)
        except TooLarge:
            return too_large(charge.received)
        finally:
            admission.leave(charge.bytes)

    async def _analyze(request: Request, charge: Charge, min_face_size: int, threshold: float, align: bool):
        data = await _read_image_bytes(request, charge)
        if isinstance(data, JSONResponse):
            return data
        try:
            # Off the event loop: the first request loads the models (seconds), and other requests (health
            # checks, refusals) must still be answered meanwhile. Later calls return the cached models.
            models = await asyncio.to_thread(prepare, models_dir)
        except ModelNotFound as exc:
            return error(503, "models_missing", str(exc))
        work = partial(analyze_and_trim, data, max_megapixels=megapixels, min_face_size=min_face_size,
                       threshold=threshold, align=align, models=models)
        try:
            (width, height), faces = await asyncio.get_running_loop().run_in_executor(executor, work)
        except ImageTooLarge as exc:
            return error(413, "too_large", str(exc))
        except InvalidImage as exc:
            return error(400, "invalid_image", str(exc))
        return {**image_dict(getattr(request.state, "filename", None), faces),
                "image": {"width": width, "height": height}}

    return app


def busy(admission: Admission) -> JSONResponse:
    return error(503, "busy", f"{admission.limit} requests or {admission.max_bytes / 2**20:.0f} MiB of photos are "
                              f"already in flight or waiting; retry in {RETRY_AFTER_S} s",
                 headers={"Retry-After": str(RETRY_AFTER_S)})


def too_large(nbytes: int) -> JSONResponse:
    return error(413, "too_large", f"request is {nbytes / 2**20:.1f} MiB; the limit is {MAX_BYTES // 2**20} MiB")


async def _read_image_bytes(request: Request, charge: Charge) -> bytes | JSONResponse:
    """The photo's bytes from a multipart field ``image`` or the raw body, charged to the queue's byte budget
    as they arrive (:class:`Busy`, :class:`TooLarge` past the budget or the size limit)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, charge.counted(request.stream()), max_part_size=MAX_REQUEST_BYTES)
        try:
            form = await parser.parse()
        except (Busy, TooLarge):
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the client's error
            return error(400, "bad_request", f"could not parse the multipart body: {exc}")
        upload = form.get("image")
        try:
            if upload is None or isinstance(upload, str):
                return error(400, "missing_image", "send the photo as the multipart file field 'image'")
            data = await upload.read(MAX_REQUEST_BYTES + 1)
            request.state.filename = upload.filename
        finally:
            await form.close()
    else:
        data = bytearray()
        async for chunk in charge.counted(request.stream()):
            data += chunk
        data = bytes(data)
    if len(data) > MAX_BYTES:
        return error(413, "too_large", f"the image is larger than {MAX_BYTES // 2**20} MiB")
    if not data and content_type.startswith("multipart/form-data"):
        return error(400, "invalid_image", "the file sent as 'image' is empty (0 bytes): send the photo itself")
    if not data:
        return error(400, "missing_image", "the request body is empty (0 bytes): POST the photo as the raw body or "
                                           "as the multipart file field 'image'")
    return data


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8000, help="0: any free port (the ready line says which)")
    parser.add_argument("--models-dir")
    parser.add_argument("--max-queue", type=_positive_int,
                        help=f"analyze requests in flight or waiting before new ones get 503 busy (default: "
                             f"{MAX_QUEUE_ENV} or {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--max-queue-mb", type=_positive_int,
                        help=f"MiB of photos in flight or waiting before new ones get 503 busy (default: "
                             f"{MAX_QUEUE_MB_ENV} or {DEFAULT_MAX_QUEUE_MB})")
    parser.add_argument("--max-megapixels", type=_positive_int,
                        help=f"largest photo decoded (default: {MAX_MEGAPIXELS_ENV} or {DEFAULT_MAX_MEGAPIXELS})")
    parser.add_argument("--workers", type=_positive_int,
                        help=f"threads that decode and analyse images (default: {WORKERS_ENV} or {DEFAULT_WORKERS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    app = create_app(args.models_dir, max_queue=args.max_queue, workers=args.workers, max_queue_mb=args.max_queue_mb,
                     max_megapixels=args.max_megapixels)
    return serve(app, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
