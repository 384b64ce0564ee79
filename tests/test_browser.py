"""A real browser (Debian's chromium driven by Playwright) against a running app.

The test starts ``streamlit run`` on 127.0.0.1 and walks through the app as a first-time user: the sidebar's
page names, the models loading in the background, the astronaut uploaded (the table, the time it took, an
uncertain gender), the shipped models' lineage, and the training monitor following a run as it moves on.
Run as a script it takes the README screenshots of every page from the app as shipped:

    python tests/test_browser.py --out docs/screenshots --photo PATH [--runs-dir RUNS]
"""

from __future__ import annotations

import argparse
import json
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
#: Waits for the models (loading, the first photo): generous, for 2 shared cores under other people's jobs.
SLOW_MS = 600_000


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
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("streamlit did not become healthy within 180 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def upload_and_wait(page, url: str, photo: Path, timeout_ms: int = SLOW_MS) -> None:
    page.goto(f"{url}/{PAGES['upload']}")
    page.locator('input[type="file"]').set_input_files(str(photo))
    page.get_by_test_id("stDataFrame").first.wait_for(timeout=timeout_ms)
    page.get_by_text("Annotated image (PNG)").wait_for(timeout=timeout_ms)


def sidebar_entries(page) -> list[str]:
    """The labels of the sidebar's page links (``ui.view.page``; Streamlit's own list is switched off)."""
    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink-NavLink")
    links.nth(3).wait_for(timeout=60_000)  # drawn by the page's script, maybe after the first text
    page.wait_for_timeout(500)
    texts = links.all_inner_texts()
    return [t.strip().splitlines()[-1].strip() for t in texts]


def screenshots(url: str, out: Path, photo: Path) -> list[Path]:
    """Visit every page in a real browser, checking what a first-time user meets on each; upload ``photo``;
    save one PNG per page into ``out``, and ``monitor.png`` when a training run is in progress."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []

    def shot(page, name: str, **kw) -> None:
        for _ in range(40):  # not in the middle of a rerun (the monitor's refresh): no element greyed out as stale
            if not page.locator('[data-stale="true"]').count():
                break
            page.wait_for_timeout(250)
        page.screenshot(path=out / name, **kw)
        saved.append(out / name)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(url)
        page.get_by_text("Privacy").first.wait_for(timeout=180_000)
        assert sidebar_entries(page) == ["Home", "Photo upload", "Webcam snapshot", "Training history"]
        assert page.title().startswith("Home")
        page.get_by_text("Models ready").wait_for(timeout=SLOW_MS)  # loaded in the background meanwhile
        shot(page, "home.png", full_page=True)
        upload_and_wait(page, url, photo)
        page.get_by_text("analysed in").first.wait_for(timeout=10_000)  # the time each result took
        page.wait_for_timeout(1000)
        shot(page, "upload.png", full_page=True)
        page.goto(f"{url}/{PAGES['webcam']}")
        page.get_by_text("Take a snapshot").first.wait_for(timeout=180_000)
        shot(page, "webcam.png", full_page=True)
        page.goto(f"{url}/{PAGES['history']}")
        page.get_by_text("How the shipped models were made").wait_for(timeout=180_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
        page.wait_for_timeout(2000)
        shot(page, "history.png", full_page=True)
        if page.get_by_text("Time left").count():  # the monitor's section, from its header to the next one
            top = page.get_by_role("heading", name="Training now").bounding_box()
            end = page.get_by_role("heading", name="How the shipped models were made").bounding_box()
            shot(page, "monitor.png", full_page=True,
                 clip={"x": 0, "y": top["y"] - 16, "width": 1400, "height": end["y"] - top["y"]})
        browser.close()
    return saved


def fake_run(runs: Path, epoch: int) -> None:
    """A run in progress as ``python -m train`` leaves it: progress.json and two epochs of history."""
    folder = runs / "age_demo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.csv").write_text("epoch,loss,mae,val_loss,val_mae,input_size\n0,90,7.5,95,7.9,64\n"
                                        "1,70,6.5,80,7.0,64\n")
    (folder / "progress.json").write_text(json.dumps({
        "schema": "train-progress/1", "run": "age_demo", "state": "running", "step": "training", "phase": "1/2",
        "input_size": 64, "epoch": epoch, "epochs": 10, "batch": 120, "batches": 259, "images_per_s": 41.5,
        "elapsed_s": 900.0, "eta_s": 3725.0, "pid": 1}))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_app_in_a_real_browser(tmp_path, tiny_models, astronaut_jpeg):
    """Page names, the result table with its timing, uncertain gender, the lineage, the monitor refreshing."""
    pytest.importorskip("playwright", reason="playwright (pip) is not installed")
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    runs = tmp_path / "runs"
    fake_run(runs, epoch=3)
    with running_app({"AGEGENDER_MODELS_DIR": str(tiny_models), "AGEGENDER_RUNS_DIR": str(runs)}) as url:
        shots = screenshots(url, tmp_path / "shots", photo)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            # the tiny models' rule (computed on a handful of validation faces): every gender is uncertain
            upload_and_wait(page, url, photo)
            page.get_by_text("Gender shown as uncertain for 1 of 1 faces").wait_for(timeout=10_000)
            fake_run(runs, epoch=3)  # written just now: a run that is still running (not silent for 3 min)
            page.goto(f"{url}/{PAGES['history']}")
            page.get_by_text("3 / 10").wait_for(timeout=180_000)
            fake_run(runs, epoch=4)  # the run moves on: the monitor follows without a reload
            page.get_by_text("4 / 10").wait_for(timeout=180_000)
            browser.close()
    assert [s.name for s in shots] == ["home.png", "upload.png", "webcam.png", "history.png", "monitor.png"]
    assert all(s.stat().st_size > 10_000 for s in shots)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_a_portrait_photo_at_phone_width(tmp_path, tiny_models, astronaut):
    """At 390 px (a phone), a portrait photo fits the screen's width, is drawn at a bounded height, the table
    follows right below it, and nothing makes the page scroll sideways."""
    pytest.importorskip("playwright", reason="playwright (pip) is not installed")
    import numpy as np
    from playwright.sync_api import sync_playwright

    from conftest import encode
    from ui.view import SHOWN_MAX_HEIGHT

    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(encode(np.concatenate([astronaut, astronaut], axis=0), "JPEG"))  # 512 x 1024
    with running_app({"AGEGENDER_MODELS_DIR": str(tiny_models)}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        upload_and_wait(page, url, photo)
        page.wait_for_timeout(1000)
        shown = page.get_by_test_id("stImage").locator("img").first.bounding_box()
        table = page.get_by_test_id("stDataFrame").first.bounding_box()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        browser.close()
    assert shown["width"] <= 390 and shown["height"] <= SHOWN_MAX_HEIGHT + 1, shown
    assert table["y"] - (shown["y"] + shown["height"]) < 200, (shown, table)  # the table right below the photo
    assert overflow <= 0, overflow


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Take README screenshots of the app as shipped.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, help="the runs folder the monitor follows (AGEGENDER_RUNS_DIR)")
    args = parser.parse_args()
    with running_app({"AGEGENDER_RUNS_DIR": str(args.runs_dir)} if args.runs_dir else {}) as app_url:
        for shot in screenshots(app_url, args.out, args.photo):
            print(shot)
