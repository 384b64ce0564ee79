"""What every answer of the HTTP API (:mod:`core.api`) shares: the error body ``{"error", "detail"}`` for every
refusal, FastAPI's and Starlette's own included; the Swagger UI and ReDoc pages served from the files that
the ``fastapi-offline`` package ships (no request leaves the machine); and serving on a port with a ready line,
or one clear line when the port is taken.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import fastapi_offline
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

#: Swagger UI's and ReDoc's scripts, styles and icon, as the fastapi-offline package ships them.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs-assets"

#: What the docs pages may load: this server's files only (ReDoc's footer would fetch Redocly's logo from their
#: server; the browser never asks for it). Inline scripts and styles are the pages' own.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")

#: The ``error`` code of each HTTP status that FastAPI or Starlette answer on their own.
STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 422: "invalid_parameter"}


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The API's one error body: ``{"error": code, "detail": message}``."""
    return JSONResponse(status_code=status, content={"error": code, "detail": detail}, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation problems as one sentence: "threshold: Input should be ... (got 2)"."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("query", "body", "path"))
        got = f" (got {problem['input']!r})" if "input" in problem and problem["input"] is not None else ""
        parts.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


def install_error_bodies(app: FastAPI) -> None:
    """Answer unknown paths (404), wrong methods (405), bad query parameters (422) and the server's own failures
    (500) with the API's error body instead of FastAPI's ``{"detail": ...}`` or plain text."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = "no such endpoint: POST /v1/analyze, GET /healthz, GET /docs"
        return error(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, STATUS_CODES[422], _validation_detail(exc))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # a bug: still the API's error body
        return error(500, "internal_error", f"the server failed on this request ({type(exc).__name__}); it has "
                                            "not stored the photo. Retry, or report it with the server's log")


def install_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) on this server's own copies of their files; the app must
    be made with ``docs_url=None, redoc_url=None``."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    favicon = f"{DOCS_ASSETS_URL}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{root}{favicon}",
            # no badge from the public validator service: nothing leaves the machine
            swagger_ui_parameters={"validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                                          redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                                          redoc_favicon_url=f"{root}{favicon}", with_google_fonts=False))


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the server; :class:`OSError` with one clear line where it cannot be
    (the port taken, the host not this machine's)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot serve on {host}: not a name or address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise OSError(f"port {port} on {host} is already taken (another server is running there?): "
                          "stop it, or choose another port with --port") from None
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, saying once on stdout when it accepts requests, and where."""

    ready_line = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self.ready_line, flush=True)


def serve(app: FastAPI, host: str, port: int) -> int:
    """Serve ``app`` on ``host:port`` until Ctrl+C: a ready line with the URL once it accepts requests, or one
    line on stderr and exit status 2 where the port cannot be had."""
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = url_of(sock)
    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.ready_line = (f"{app.title} ready at {url} (POST {url}/v1/analyze; interactive docs at {url}/docs). "
                         "Ctrl+C stops it.")
    server.run(sockets=[sock])
    return 0
