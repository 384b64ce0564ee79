"""A real browser (Debian's chromium driven by Playwright) against a running app.

The test starts ``streamlit run`` on 127.0.0.1, uploads the astronaut on the upload page and waits for the
result table. Run as a script it takes the README screenshots of every page from the app as shipped:

    python tests/test_browser.py --out docs/screenshots --photo PATH
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {"home": "", "upload": "Photo_upload", "webcam": "Webcam_snapshot", "history": "Training_history"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(env: dict[str, str]):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("streamlit did not become healthy within 90 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def upload_and_wait(page, url: str, photo: Path, timeout_ms: int = 180_000) -> None:
    page.goto(f"{url}/{PAGES['upload']}")
    page.locator('input[type="file"]').set_input_files(str(photo))
    page.get_by_test_id("stDataFrame").first.wait_for(timeout=timeout_ms)
    page.get_by_text("Annotated image (PNG)").wait_for(timeout=timeout_ms)


def screenshots(url: str, out: Path, photo: Path, snapshot: Path | None = None) -> list[Path]:
    """Visit every page in a real browser; upload ``photo``; save one PNG per page into ``out``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(url)
        page.get_by_text("Privacy").first.wait_for(timeout=180_000)
        page.screenshot(path=out / "home.png", full_page=True)
        saved.append(out / "home.png")
        upload_and_wait(page, url, photo)
        page.wait_for_timeout(1000)
        page.screenshot(path=out / "upload.png", full_page=True)
        saved.append(out / "upload.png")
        page.goto(f"{url}/{PAGES['webcam']}")
        page.get_by_text("Take a snapshot").first.wait_for(timeout=180_000)
        page.screenshot(path=out / "webcam.png", full_page=True)
        saved.append(out / "webcam.png")
        page.goto(f"{url}/{PAGES['history']}")
        page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=out / "history.png", full_page=True)
        saved.append(out / "history.png")
        browser.close()
    return saved


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_upload_in_a_real_browser(tmp_path, tiny_models, astronaut_jpeg):
    pytest.importorskip("playwright", reason="playwright (pip) is not installed")
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    with running_app({"AGEGENDER_MODELS_DIR": str(tiny_models)}) as url:
        shots = screenshots(url, tmp_path / "shots", photo)
    assert all(s.stat().st_size > 10_000 for s in shots)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Take README screenshots of the app as shipped.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--photo", type=Path, required=True)
    args = parser.parse_args()
    with running_app({}) as app_url:
        for shot in screenshots(app_url, args.out, args.photo):
            print(shot)
