"""The HTTP API through FastAPI's test client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import ASTRONAUT_FACE
from core.api import MAX_BYTES, create_app
from core.boxes import iou


@pytest.fixture(scope="module")
def client(tiny_models) -> TestClient:
    return TestClient(create_app(tiny_models))


def test_healthz(client):
    body = client.get("/healthz").json()
    assert {k: body[k] for k in ("status", "models")} == {"status": "ok", "models": "loaded"}
    assert body["runtime"] in ("keras", "export") and body["precision"] in ("float32", "bfloat16")


def test_multipart_and_raw_body_agree(client, astronaut_jpeg):
    a = client.post("/v1/analyze", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
    b = client.post("/v1/analyze", content=astronaut_jpeg, headers={"content-type": "image/jpeg"})
    assert a.status_code == b.status_code == 200
    assert a.json() == {**b.json(), "file": "a.jpg"}  # only the multipart part has a file name
    body = a.json()
    assert body["image"] == {"width": 512, "height": 512}
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    box = (face["box"]["x"], face["box"]["y"], face["box"]["w"], face["box"]["h"])
    assert iou(box, ASTRONAUT_FACE) > 0.7
    assert set(face) >= {"age", "age_range", "gender", "female_probability", "confidence", "landmarks",
                         "cut_by_frame"}
    assert face["cut_by_frame"] is False


def test_query_parameters(client, astronaut_jpeg):
    r = client.post("/v1/analyze?min_face_size=200", content=astronaut_jpeg)
    assert r.status_code == 200 and r.json()["faces"] == []
    assert client.post("/v1/analyze?threshold=3", content=astronaut_jpeg).status_code == 422


@pytest.mark.parametrize("payload", [b"", b"plain text", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_bad_images_are_4xx_json(client, payload):
    r = client.post("/v1/analyze", content=payload, headers={"content-type": "application/octet-stream"})
    assert 400 <= r.status_code < 500
    assert r.json()["error"] in ("invalid_image", "missing_image")


def test_missing_field_and_too_large(client):
    r = client.post("/v1/analyze", files={"photo": ("a.jpg", b"x", "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"] == "missing_image"
    r = client.post("/v1/analyze", content=b"\0" * (MAX_BYTES + 1))
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_openapi_schema_documents_the_endpoint(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/analyze"]["post"]
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert "/healthz" in schema["paths"]


def test_parallel_requests_get_their_own_results(client, astronaut):
    """8 requests at once, each a different image: each answer belongs to its own image."""
    import io

    from PIL import Image

    def make(i: int) -> tuple[int, bytes]:
        pad = 40 * i
        canvas = np.full((512 + pad, 512 + pad, 3), 30, np.uint8)
        canvas[pad:, pad:] = astronaut
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="JPEG", quality=92)
        return pad, buf.getvalue()

    images = [make(i) for i in range(8)]

    def call(item):
        pad, data = item
        return pad, client.post("/v1/analyze", content=data).json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, images))
    for pad, body in answers:
        assert body["image"]["width"] == 512 + pad
        x = body["faces"][0]["box"]["x"]
        assert abs(x - (ASTRONAUT_FACE[0] + pad)) < 6


def test_full_queue_answers_503_busy_json_with_retry_after(tiny_models, astronaut_jpeg, monkeypatch):
    """With room for one request, a second one while the first is being analysed is refused at once with
    503 busy; once the first is done, requests are answered normally again. Deterministic: the first
    request's analysis waits for an event that the test sets only after the refusal."""
    import threading

    import core.api

    real = core.api.analyze_image
    started, release = threading.Event(), threading.Event()

    def slow_analysis(*args, **kwargs):
        started.set()
        assert release.wait(60), "the test never released the analysis"
        return real(*args, **kwargs)

    monkeypatch.setattr(core.api, "analyze_image", slow_analysis)
    app = create_app(tiny_models, max_queue=1)
    client = TestClient(app)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.post, "/v1/analyze", content=astronaut_jpeg)
        assert started.wait(60), "the first request never reached the analysis"
        refused = client.post("/v1/analyze", files={"image": ("a.jpg", astronaut_jpeg, "image/jpeg")})
        release.set()
        assert first.result(timeout=120).status_code == 200
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json"
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["error"] == "busy" and "1 request" in body["detail"]
    assert app.state.admission.inside == 0
    assert client.post("/v1/analyze", content=astronaut_jpeg).status_code == 200


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG of random pixels: as many bytes as pixels x 3, whatever the compression."""
    from conftest import encode

    return encode(np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8), "PNG")


def blocked_analysis(monkeypatch):
    """Make the analysis wait until released: (started, release) events."""
    import threading

    import core.api

    real = core.api.analyze_image
    started, release = threading.Event(), threading.Event()

    def slow_analysis(*args, **kwargs):
        started.set()
        assert release.wait(120), "the test never released the analysis"
        return real(*args, **kwargs)

    monkeypatch.setattr(core.api, "analyze_image", slow_analysis)
    return started, release


def test_queue_of_large_photos_stays_within_its_byte_budget(tiny_models, monkeypatch):
    """With room for 32 requests but 4 MiB of bodies, 1.1 MB photos sent while the first is analysed: those
    that fit wait (3 in all), the others get 503 busy at once; the bodies held never pass the budget, and
    every admitted photo is answered."""
    import time

    photo = noise_png(600)
    assert 1.05e6 < len(photo) < 1.15e6
    started, release = blocked_analysis(monkeypatch)
    app = create_app(tiny_models, max_queue=32, max_queue_mb=4)
    admission = app.state.admission
    client = TestClient(app)
    post = lambda: client.post("/v1/analyze", files={"image": ("big.png", photo, "image/png")})  # noqa: E731
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(post)
        assert started.wait(60), "the first request never reached the analysis"
        others = [pool.submit(post) for _ in range(7)]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in others) + admission.inside - 1 < 7 and time.monotonic() < deadline:
            assert admission.bytes <= admission.max_bytes
            time.sleep(0.05)
        assert admission.inside == 3 and admission.bytes <= 4 * 2**20
        refused = [f.result() for f in others if f.done()]
        waiting = [f for f in others if not f.done()]
        release.set()
        answered = [f.result(timeout=120) for f in (first, *waiting)]
    assert len(refused) == 5 and all(r.status_code == 503 and r.json()["error"] == "busy" for r in refused)
    assert all(r.headers["retry-after"] for r in refused)
    assert [r.status_code for r in answered] == [200] * 3
    assert admission.inside == 0 and admission.bytes == 0


def test_a_body_without_length_is_charged_as_it_arrives(tiny_models, astronaut_jpeg, monkeypatch):
    """A chunked upload (no Content-Length) that outgrows the byte budget while another request is inside is
    answered 503 busy; alone, the same upload is analysed."""
    photo = noise_png(600)
    chunks = lambda: iter([photo[i:i + 65536] for i in range(0, len(photo), 65536)])  # noqa: E731
    started, release = blocked_analysis(monkeypatch)
    app = create_app(tiny_models, max_queue=4, max_queue_mb=1)
    client = TestClient(app)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.post, "/v1/analyze", content=astronaut_jpeg)
        assert started.wait(60), "the first request never reached the analysis"
        refused = client.post("/v1/analyze", content=chunks())
        release.set()
        assert first.result(timeout=120).status_code == 200
    assert refused.status_code == 503 and refused.json()["error"] == "busy"
    assert app.state.admission.inside == 0 and app.state.admission.bytes == 0
    assert client.post("/v1/analyze", content=chunks()).status_code == 200


def test_photos_over_the_megapixel_limit_are_refused_before_decoding(tiny_models, monkeypatch):
    """``max_megapixels=1``: a 1.2 MP photo is a 413 too_large naming the limit, and is never decoded; a
    0.8 MP photo is analysed."""
    import core.api
    from conftest import encode

    decoded = []
    real = core.api.load_image
    monkeypatch.setattr(core.api, "load_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    client = TestClient(create_app(tiny_models, max_megapixels=1))
    big = client.post("/v1/analyze", content=encode(np.zeros((1000, 1200, 3), np.uint8), "PNG"))
    assert big.status_code == 413 and big.json()["error"] == "too_large" and "at most 1" in big.json()["detail"]
    assert decoded == []
    assert client.post("/v1/analyze", content=encode(np.zeros((800, 1000, 3), np.uint8), "PNG")).status_code == 200
    assert decoded == [1]


def test_refused_and_failed_requests_free_their_place(tiny_models, astronaut_jpeg, monkeypatch):
    """Errors (bad image, an exception in the analysis) leave the queue: with room for one request, the
    next one is still answered."""
    import core.api

    app = create_app(tiny_models, max_queue=1)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/v1/analyze", content=b"plain text").status_code == 400
    assert client.post("/v1/analyze", content=b"").status_code == 400

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(core.api, "analyze_image", broken)
        assert client.post("/v1/analyze", content=astronaut_jpeg).status_code == 500
    assert app.state.admission.inside == 0
    assert client.post("/v1/analyze", content=astronaut_jpeg).status_code == 200


def test_max_queue_and_workers_from_flag_environment_or_default(monkeypatch):
    from core.api import DEFAULT_MAX_QUEUE, DEFAULT_WORKERS, MAX_QUEUE_ENV, WORKERS_ENV, build_parser, max_queue_setting

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert create_app().state.executor._max_workers == DEFAULT_WORKERS
    assert create_app(workers=1).state.executor._max_workers == 1
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert create_app().state.executor._max_workers == 3
    assert build_parser().parse_args(["--workers", "4"]).workers == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--workers", "0"])
    with pytest.raises(ValueError, match="at least 1"):
        create_app(workers=0)

    monkeypatch.delenv(MAX_QUEUE_ENV, raising=False)
    assert max_queue_setting() == DEFAULT_MAX_QUEUE
    assert create_app().state.admission.limit == DEFAULT_MAX_QUEUE  # models load on first use, not here
    monkeypatch.setenv(MAX_QUEUE_ENV, "5")
    assert create_app().state.admission.limit == 5
    assert create_app(max_queue=3).state.admission.limit == 3
    assert build_parser().parse_args(["--max-queue", "7"]).max_queue == 7
    assert build_parser().parse_args([]).max_queue is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-queue", "0"])
    monkeypatch.setenv(MAX_QUEUE_ENV, "many")
    with pytest.raises(ValueError, match=MAX_QUEUE_ENV):
        create_app()
    with pytest.raises(ValueError, match="at least 1"):
        create_app(max_queue=0)


def test_images_are_analysed_on_the_apps_own_threads(tiny_models, astronaut_jpeg, monkeypatch):
    """However many requests come at once, decoding and analysis run on the app's ``workers`` threads (each
    thread that analyses keeps its own malloc arena: a thread per request made memory grow under load)."""
    import threading

    import core.api

    real = core.api.analyze_image
    threads: set[str] = set()

    def recording(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(core.api, "analyze_image", recording)
    client = TestClient(create_app(tiny_models, workers=2))
    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/analyze", content=astronaut_jpeg).status_code, range(6)))
    assert codes == [200] * 6
    assert 1 <= len(threads) <= 2 and all(name.startswith("analyze") for name in threads), threads


def test_load_bench_runs_bounded_and_reports(tiny_models):
    """``python -m bench.load`` starts the API on 127.0.0.1, sends a few photos from 2 clients, times a seen
    and a new 720p size, stops the server and prints its JSON summary last (no timing is asserted); a peak
    over ``--max-rss-mb`` (here 1 MB) fails the run."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "bench.load", "--clients", "2", "--requests", "6", "--deadline", "300",
                        "--size-probe", "1", "--photos", "synthetic", "--max-rss-mb", "1", "--models-dir",
                        str(tiny_models)], cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=400)
    assert r.stdout.strip(), r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) >= {"clients", "requests", "answered", "throughput_rps", "latency_p50_ms", "latency_p95_ms",
                           "status_counts", "errors", "rss_mb_first", "rss_mb_end", "rss_ratio", "memory_flat",
                           "machine", "max_queue", "photo_sizes", "rss_peak_mb", "rss_budget_mb", "within_budget",
                           "seen_720p_ms", "new_720p_ms"}
    assert result["answered"] == 6 and result["finished"] and result["server_alive"]
    assert result["status_counts"] == {"200": 6} and result["errors"] == 0, result["error_samples"]
    assert result["rss_sampled_after"] == 3 and result["rss_mb_first"] > 0 and result["rss_mb_end"] > 0
    assert result["latency_p50_ms"] <= result["latency_p95_ms"]
    assert result["photos"] == 6 and result["photo_sizes"] == 3
    assert result["rss_budget_mb"] == 1 and result["rss_peak_mb"] > 1 and not result["within_budget"]
    assert r.returncode == 1 and "OVER" in r.stdout


def test_load_bench_sends_real_photos_by_default(tmp_path, monkeypatch):
    """The photos of ../shared/data/photos where that folder exists, else the six synthetic ones; a folder
    given is sent alone."""
    import bench.load
    from conftest import encode

    monkeypatch.setattr(bench.load, "DEFAULT_PHOTOS", tmp_path / "missing")
    assert [name for name, _ in bench.load.bench_photos()][:2] == ["240p_1face", "240p_4faces"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, side in enumerate((40, 60)):
        (folder / f"p{i}.png").write_bytes(encode(np.zeros((side, side + 10, 3), np.uint8), "PNG"))
    (folder / "notes.txt").write_text("not a photo")
    monkeypatch.setattr(bench.load, "DEFAULT_PHOTOS", folder)
    photos = bench.load.bench_photos()
    assert [name for name, _ in photos] == ["p0.png", "p1.png"]
    assert bench.load.photo_sizes(photos) == [(70, 60), (50, 40)]
    assert len(bench.load.bench_photos("synthetic")) == 6


def test_load_bench_accepts_only_200_and_503_busy():
    """The load bench's judge: 503 counts as shed load only with the busy JSON and a Retry-After header."""
    import httpx

    from bench.load import check_answer

    def judge(status, body=None, headers=None, text=None):
        kw = {"json": body} if text is None else {"text": text}
        return check_answer(0, "p", httpx.Response(status, headers=headers, **kw), 0.1)

    answer, wait = judge(200, {"faces": [{}, {}], "image": {"width": 1, "height": 1}})
    assert answer.ok and answer.faces == 2 and wait == 0
    answer, wait = judge(503, {"error": "busy", "detail": "x"}, {"Retry-After": "2"})
    assert answer.ok and answer.status == "503" and wait == 2
    assert not judge(503, {"error": "busy", "detail": "x"})[0].ok  # no Retry-After
    assert not judge(503, {"error": "models_missing", "detail": "x"}, {"Retry-After": "1"})[0].ok
    assert not judge(503, text="Service Unavailable", headers={"Retry-After": "1"})[0].ok
    assert not judge(500, text="Internal Server Error")[0].ok
    assert not judge(200, {"faces": "none"})[0].ok


def test_loading_the_models_does_not_block_other_requests(tmp_path, monkeypatch, astronaut_jpeg):
    """The first analyze request loads the models off the event loop: while it waits, another request (here an
    empty body, refused before any model is needed) is still answered."""
    import threading

    import core.api
    from core.errors import ModelNotFound

    release, entered, returned = threading.Event(), threading.Event(), threading.Event()

    def slow_prepare(_models_dir=None, **_kw):
        entered.set()
        release.wait(20)  # on the event loop, this would hold every other request for 20 s
        returned.set()
        raise ModelNotFound("no models in this test")

    monkeypatch.setattr(core.api, "prepare", slow_prepare)
    with TestClient(create_app(tmp_path)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/analyze", content=astronaut_jpeg)
        assert entered.wait(60)
        try:
            other = client.post("/v1/analyze", content=b"", headers={"content-type": "application/octet-stream"})
            assert other.status_code == 400 and not returned.is_set()  # answered while the load still waits
        finally:
            release.set()
        r = first.result(timeout=60)
        assert r.status_code == 503 and r.json()["error"] == "models_missing"
