"""The HTTP API's edges: every refusal in the ``{"error", "detail"}`` body, the output contract, pixel limits as
413, empty uploads, the docs pages without any third-party request, the ready line and a taken port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contract import check_image
from fastapi.testclient import TestClient

from conftest import png_claiming
from core.api import create_app

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def client(tiny_models) -> TestClient:
    return TestClient(create_app(tiny_models))


def test_answers_keep_the_output_contract(client, astronaut_jpeg):
    body = client.post("/v1/analyze", files={"image": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")}).json()
    check_image(body, extra=("image",))
    assert body["file"] == "astronaut.jpg" and body["status"] == "ok"
    raw = client.post("/v1/analyze?min_face_size=400", content=astronaut_jpeg).json()
    check_image(raw, extra=("image",))
    assert raw["file"] is None and raw["status"] == "no_face"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("get", "/nowhere", 404, "not_found"),
    ("get", "/v1/analyze", 405, "method_not_allowed"),
    ("post", "/v1/analyze?threshold=2", 422, "invalid_parameter"),
    ("post", "/v1/analyze?min_face_size=big", 422, "invalid_parameter"),
])
def test_framework_refusals_have_the_documented_body(client, method, path, status, code):
    r = getattr(client, method)(path)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    if status == 422:
        assert path.split("?")[1].split("=")[0] in body["detail"]  # names the parameter
    if status == 405:
        assert "POST" in r.headers["allow"]


def test_even_a_failure_of_the_server_has_the_documented_body(tiny_models, astronaut_jpeg, monkeypatch):
    import core.api

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(core.api, "analyze_image", broken)
    r = TestClient(create_app(tiny_models), raise_server_exceptions=False).post("/v1/analyze", content=astronaut_jpeg)
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and "RuntimeError" in r.json()["detail"]


def test_too_many_pixels_is_413_like_too_many_bytes(client):
    r = client.post("/v1/analyze", content=png_claiming(12_000, 12_000))  # 144 megapixels in a 70-byte file
    assert r.status_code == 413
    body = r.json()
    assert body["error"] == "too_large" and "144 megapixels" in body["detail"]


def test_an_empty_upload_says_it_is_empty(client):
    r = client.post("/v1/analyze", files={"image": ("a.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and "empty (0 bytes)" in r.json()["detail"]
    r = client.post("/v1/analyze", content=b"")
    assert r.status_code == 400 and "empty (0 bytes)" in r.json()["detail"]


def test_docs_pages_load_only_this_servers_files(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "googleapis" not in html and "cdn.jsdelivr" not in html
        for url in urls:
            assert client.get(url).status_code == 200, url
    assert '"validatorUrl": null' in client.get("/docs").text
    for page in ("/docs", "/redoc"):  # and the browser may load nothing from elsewhere (tested in a browser below)
        assert "default-src 'self'" in client.get(page).headers["content-security-policy"]


def start_server(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.api", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ready_line_then_docs_offline_in_a_browser_and_a_taken_port(tiny_models):
    """The server says where it listens; Swagger UI draws with every non-local request blocked; a second
    server on the same port says so in one line."""
    proc = start_server("--port", "0", env={"AGEGENDER_MODELS_DIR": str(tiny_models)})
    try:
        line = proc.stdout.readline()
        match = re.search(r"ready at (http://127\.0\.0\.1:(\d+))", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url, port = match.group(1), match.group(2)
        assert f"{url}/docs" in line

        taken = subprocess.run([sys.executable, "-m", "core.api", "--port", port], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
        assert taken.returncode == 2
        assert taken.stderr.strip().splitlines() == [
            f"error: port {port} on 127.0.0.1 is already taken (another server is running there?): stop it, or "
            "choose another port with --port"]

        if Path(CHROMIUM).exists():
            browse_docs_offline(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def browse_docs_offline(url: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROMIUM_ARGS

    outside: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith(url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.route("**/*", route)
        page.goto(f"{url}/docs")
        page.get_by_text("/v1/analyze").first.wait_for(timeout=60_000)  # the schema drawn by Swagger UI
        page.goto(f"{url}/redoc")
        page.get_by_text("/v1/analyze").first.wait_for(timeout=60_000)  # drawn by ReDoc
        time.sleep(1)
        browser.close()
    assert outside == []


def test_a_host_that_is_not_this_machine_is_one_line(tiny_models):
    out = subprocess.run([sys.executable, "-m", "core.api", "--host", "no-such-host.invalid"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AGEGENDER_MODELS_DIR": str(tiny_models)})
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no-such-host.invalid" in out.stderr


def test_bind_refuses_a_port_in_use():
    from core.api_support import bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is already taken"):
            bind("127.0.0.1", port)
