"""Privacy: uploads are analysed in memory, never written to disk or logged; sessions never see each other's
results; Streamlit's usage statistics are off and XSRF protection is on."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import encode, three_faces

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "pages" / "1_Photo_upload.py"
SYSTEM_TMP = Path(tempfile.gettempdir())
#: TensorFlow's autograph writes the code it generates for a tf.function to the temporary folder.
AUTOGRAPH = re.compile(r"__autograph_generated_file\w+\.py")

#: Folders of the repository that are not the app's business: VCS, tool caches, and what training writes
#: (``runs/``, ``.cache/``; a training job may be running next to the tests). Virtualenvs are skipped too.
REPO_SKIP = {".git", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", "__pycache__", "runs", ".cache",
             "node_modules"}


# --- helpers ------------------------------------------------------------------------------------------------


def _walk(root: Path, skip: set[str] = frozenset()) -> dict[str, float]:
    """{path: mtime} of every file under ``root`` (recursively), skipping folders named in ``skip`` and
    virtualenvs."""
    found: dict[str, float] = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not (Path(dirpath, d) / "pyvenv.cfg").exists()]
        for f in filenames:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):  # vanished while walking
                found[p] = os.stat(p).st_mtime_ns
    return found


def _shallow(root: Path) -> dict[str, float]:
    """{path: mtime} of the files directly in ``root``, and {path: 0} for its folders (only their names
    count: folders there are changed by other programs, e.g. pytest's own temporary folders)."""
    found: dict[str, float] = {}
    with os.scandir(root) as it:
        for e in it:
            with contextlib.suppress(OSError):
                found[e.path] = 0 if e.is_dir(follow_symlinks=False) else e.stat(follow_symlinks=False).st_mtime_ns
    return found


def snapshot(fresh_tmp: Path) -> dict[str, float]:
    home = Path.home()
    state: dict[str, float] = {}
    state.update(_walk(ROOT, REPO_SKIP))
    state.update(_shallow(SYSTEM_TMP))
    state.update(_walk(fresh_tmp))
    state.update(_shallow(home))
    state.update(_walk(home / ".streamlit"))
    return state


def changed(before: dict[str, float], after: dict[str, float]) -> list[str]:
    return sorted(p for p, m in after.items() if before.get(p) != m)


@pytest.fixture
def fresh_tmp(tmp_path, monkeypatch) -> Path:
    """A new, empty temporary folder that ``tempfile`` (and child processes, through TMPDIR) use during the
    test, so any temporary file the app makes lands there and is seen. The system temporary folder is still
    watched (shallowly) for code that bypasses ``tempfile``."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def page_env(monkeypatch, tiny_models):
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tiny_models))
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def client(tiny_models):
    from fastapi.testclient import TestClient

    from core.api import create_app

    return TestClient(create_app(tiny_models))


@pytest.fixture(scope="module")
def private_jpeg(astronaut) -> bytes:
    """The astronaut with a little seeded noise: bytes that appear nowhere else."""
    rng = np.random.default_rng(1234)
    noisy = np.clip(astronaut.astype(np.int16) + rng.integers(-3, 4, astronaut.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def three_faces_png(astronaut) -> bytes:
    return encode(three_faces(astronaut), "PNG")


def new_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGE), default_timeout=240).run()
    assert not at.exception
    return at


def analyse_on_page(name: str, data: bytes, mime: str):
    at = new_page()
    at.file_uploader[0].set_value([(name, data, mime)]).run()
    assert not at.exception and not at.warning and not at.error
    return at


def analyse_on_api(client, name: str, data: bytes, mime: str) -> dict:
    r = client.post("/v1/analyze", files={"image": (name, data, mime)})
    assert r.status_code == 200, r.text
    return r.json()


# --- (a) nothing written to disk -------------------------------------------------------------------------------


def test_page_and_api_write_no_files(page_env, client, fresh_tmp, private_jpeg):
    # Warm up first (model and detector loading, Streamlit's first run), outside the watched window.
    analyse_on_page("warmup.jpg", private_jpeg, "image/jpeg")
    analyse_on_api(client, "warmup.jpg", private_jpeg, "image/jpeg")

    before = snapshot(fresh_tmp)
    at = analyse_on_page("private.jpg", private_jpeg, "image/jpeg")
    assert len(at.dataframe[0].value) == 1
    # the downloads are built in memory too: ask for their bytes
    assert len(at.get("download_button")) == 3
    body = analyse_on_api(client, "private.jpg", private_jpeg, "image/jpeg")
    assert len(body["faces"]) == 1
    after = snapshot(fresh_tmp)

    assert changed(before, after) == []
    # The only files ever made in the temporary folder are TensorFlow's generated code for a traced
    # tf.function (during the warm-up); none holds any of the photo.
    made = sorted(p.name for p in fresh_tmp.rglob("*") if p.is_file())
    assert all(AUTOGRAPH.fullmatch(name) for name in made), made
    for p in fresh_tmp.rglob("*"):
        if p.is_file():
            content = p.read_bytes()
            assert private_jpeg[1000:1064] not in content and base64.b64encode(private_jpeg[:300]).decode()[:64] \
                not in content.decode("latin-1")


# --- (b) no image content in logs or on stdout / stderr -----------------------------------------------------


def needles(data: bytes) -> tuple[list[str], list[bytes]]:
    """Text that would be in a log if the image (or a part of it) was written there as base64, hex or a bytes
    repr, and raw byte runs for the binary output."""
    mid = len(data) // 2
    b64 = base64.b64encode(data).decode()
    b64_url = base64.urlsafe_b64encode(data).decode()
    hexed = data.hex()
    text = [b64[:84], b64[len(b64) // 2:len(b64) // 2 + 64], b64_url[len(b64) // 2:len(b64) // 2 + 64],
            hexed[:128], hexed[2 * mid:2 * mid + 96], hexed[2 * mid:2 * mid + 96].upper(),
            repr(data[mid:mid + 24])[2:-1], "data:image/"]
    raw = [data[:64], data[mid:mid + 48], data[-48:]]
    return text, raw


@pytest.fixture
def all_logs(caplog, monkeypatch):
    """Every log record of every logger at DEBUG, also those that do not propagate to the root (Streamlit's)."""
    records: list[logging.LogRecord] = []
    original = logging.Logger.callHandlers

    def call_handlers(self, record):
        records.append(record)
        original(self, record)

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(logging.Logger, "isEnabledFor", lambda self, level: True)
    monkeypatch.setattr(logging.Logger, "callHandlers", call_handlers)
    return records


def log_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for r in records:
        try:
            parts.append(r.getMessage())
        except Exception:  # noqa: BLE001 - a broken format string is still text to search
            parts.append(f"{r.msg!r} {r.args!r}")
        if r.exc_info and r.exc_info[1] is not None:
            parts.append(repr(r.exc_info[1]))
    return "\n".join(parts)


def test_no_image_content_in_logs_or_output(page_env, client, all_logs, capfdbinary, private_jpeg):
    analyse_on_api(client, "private.jpg", private_jpeg, "image/jpeg")
    bad = private_jpeg[: len(private_jpeg) // 3]  # an error path too: the truncated file
    r = client.post("/v1/analyze", files={"image": ("broken.jpg", bad, "image/jpeg")})
    assert r.status_code == 400
    at = analyse_on_page("private.jpg", private_jpeg, "image/jpeg")
    assert len(at.dataframe[0].value) == 1
    at = new_page()
    at.file_uploader[0].set_value([("broken.jpg", bad, "image/jpeg")]).run()
    assert len(at.warning) == 1

    out = capfdbinary.readouterr()
    binary = out.out + out.err
    text = binary.decode("utf-8", "replace") + "\n" + log_text(all_logs)
    assert all_logs, "the log capture saw nothing at all: the hook is broken"
    text_needles, raw_needles = needles(private_jpeg)
    for n in text_needles:
        assert n not in text, f"image content in the logs or output: {n[:40]}..."
    for n in raw_needles:
        assert n not in binary, "raw image bytes on stdout or stderr"
    # The API's answer and the error messages carry no image content either.
    for n in text_needles:
        assert n not in r.text


# --- (c) Streamlit's configuration ----------------------------------------------------------------------------


def test_streamlit_config_is_private():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["enableXsrfProtection"] is True
    assert config["client"]["showErrorDetails"] in ("none", False)


# --- (d) concurrent sessions -----------------------------------------------------------------------------------


def test_concurrent_sessions_get_their_own_results(page_env, private_jpeg, three_faces_png):
    """Two sessions of the upload page analyse different photos at the same moment; each sees its own."""
    jobs = {"one.jpg": (private_jpeg, "image/jpeg", 1), "three.png": (three_faces_png, "image/png", 3)}
    pages = {name: new_page() for name in jobs}
    start = threading.Barrier(len(jobs))
    results: dict[str, object] = {}

    def session(name: str) -> None:
        data, mime, _ = jobs[name]
        try:
            at = pages[name]
            at.file_uploader[0].set_value([(name, data, mime)])
            start.wait(timeout=60)
            results[name] = at.run()
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            results[name] = exc

    for _ in range(2):  # twice: the second round runs with everything warm, so the runs really overlap
        threads = [threading.Thread(target=session, args=(name,)) for name in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for name, (_, _, n_faces) in jobs.items():
            at = results[name]
            assert not isinstance(at, BaseException), f"{name}: {at!r}"
            assert not at.exception and not at.warning and not at.error
            assert [s.value for s in at.subheader] == [name]
            assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == n_faces
            assert at.get("image")  # the annotated image of its own photo
        pages = {name: new_page() for name in jobs}
