"""HTTP JSON API on the same ``core.analyze``: ``python -m core.api [--host 127.0.0.1] [--port 8000]``.

- ``POST /v1/analyze``: the image as multipart field ``image``, or as the raw request body. Query
  parameters ``min_face_size``, ``threshold``, ``align``. Answers ``{"faces": [FaceResult.as_dict(), ...],
  "image": {"width": W, "height": H}}``.
- ``GET /healthz``: liveness and whether the models are loaded.
- ``GET /openapi.json``, ``GET /docs``: the schema.

Bad input is a 4xx JSON error ``{"error": code, "detail": message}``, never a 500. Images are analysed in
memory and never stored or logged.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.errors import InvalidImage, ModelNotFound
from core.image import MAX_BYTES, load_image
from core.models import load_models
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD
from core.pipeline import analyze as analyze_image

#: Largest request accepted, in bytes (the image plus multipart overhead).
MAX_REQUEST_BYTES = MAX_BYTES + 64 * 1024

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
        "503": {"description": "Models not installed"},
    },
}


def error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def create_app(models_dir: str | Path | None = None) -> FastAPI:
    app = FastAPI(title="Age & gender API", version="1",
                  description="Faces, apparent age and gender probability for a photo.")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        try:
            load_models(models_dir)
            return {"status": "ok", "models": "loaded"}
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
        data = await _read_image_bytes(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            models = load_models(models_dir)
        except ModelNotFound as exc:
            return error(503, "models_missing", str(exc))
        try:
            rgb = await run_in_threadpool(load_image, data, name="the uploaded image")
            faces = await run_in_threadpool(analyze_image, rgb, min_face_size=min_face_size, threshold=threshold,
                                            align=align, models=models)
        except InvalidImage as exc:
            return error(400, "invalid_image", str(exc))
        return {"faces": [f.as_dict() for f in faces],
                "image": {"width": int(rgb.shape[1]), "height": int(rgb.shape[0])}}

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


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m core.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--models-dir")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.models_dir), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
