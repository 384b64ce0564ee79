"""The HTTP API under load: concurrent clients POST photos to a server that this command starts and stops.

    python -m bench.load [--clients 16] [--requests 500] [--photos DIR|synthetic] [--max-rss-mb 1000]
                         [--port 0] [--max-queue N] [--max-queue-mb N] [--workers N] [--models-dir DIR]
                         [--server-env NAME=VALUE] [--deadline 1800] [--size-probe 8]

Starts ``python -m core.api`` on 127.0.0.1 in a subprocess (``--port 0``: a free port), waits until
``/healthz`` says the models are loaded, then ``--clients`` threads send ``--requests`` multipart POSTs to
``/v1/analyze`` in all, and the server is stopped. The photos, in a seeded shuffled mix, are real ones: the
images of ``--photos DIR``, by default ``../shared/data/photos`` next to the project where it exists (17
photos of 240p to 2,204 px, portraits and groups); with ``--photos synthetic`` or where that folder is
missing, the benchmark's six (``bench/inputs.py``: 240p, 720p and 1080p with one and with four faces, built
from ``skimage.data.astronaut()``). Everything is bounded: the request count, and a global ``--deadline`` in
seconds (server start included) after which no request is sent and none waited for.

The only acceptable answers are 200 with the faces, and ``503 {"error": "busy"}`` with a ``Retry-After``
header when the server's bounded queue is full (a client told "busy" waits that long before its next
request; with the default ``--max-queue`` of 32 and 16 clients it never is). Anything else is an error.

Memory: the server's resident set size (``/proc/<pid>/status``) is sampled after the first
``--rss-after`` answers (default 50), again after every further ``--rss-after`` (the series is reported too)
and at the end; it is flat when the end is at most ``--rss-ratio`` (1.2) times the first sample. Its peak is
the kernel's high-water mark (VmHWM), and must stay within ``--max-rss-mb`` (default 1000, 0: no budget).

New photo sizes: after the load, with the server idle, ``--size-probe`` (default 8) 720p photos of sizes the
load did not send (one photo, a few pixels smaller each time) are sent twice each in a row: the median
latency of the first sending (a new size) and of the second (a seen size), and their ratio, are reported.

Reported: latency p50/p95/max of the 200s (client side, send to last byte: with one model behind a lock it
includes the wait in the queue), throughput, answers by status code, RSS, the size probe. The last line
printed is one JSON object; the exit status is 1 on any error, an unfinished run, growing memory or a peak
over the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.memory import rss_mb

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HOST = "127.0.0.1"  # never anything else: this command loads a server it starts itself
#: The real photos sent by default, where this folder exists.
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "photos"
SYNTHETIC = "synthetic"


def synthetic_photos() -> list[tuple[str, bytes]]:
    """(name, JPEG bytes): the six generated benchmark photos."""
    from bench.inputs import RESOLUTIONS, photo

    return [(f"{res}_{'1face' if faces == 1 else f'{faces}faces'}", photo(res, faces))
            for res in RESOLUTIONS for faces in (1, 4)]


def bench_photos(photos: str | Path | None = None) -> list[tuple[str, bytes]]:
    """(name, JPEG/PNG bytes): the images in the folder ``photos`` (default :data:`DEFAULT_PHOTOS` where it
    exists), or the six generated ones for ``"synthetic"`` or where there is no folder."""
    folder = DEFAULT_PHOTOS if photos is None else photos
    if str(folder) == SYNTHETIC or (photos is None and not DEFAULT_PHOTOS.is_dir()):
        return synthetic_photos()
    items = [(p.name, p.read_bytes()) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise ValueError(f"no JPEG or PNG image in {folder}")
    return items


def photo_sizes(photos: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """The distinct (width, height) of the photos, as decoded (EXIF rotation applied), largest first."""
    import io

    from PIL import Image, ImageOps

    sizes = {ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size for _, data in photos}
    return sorted(sizes, key=lambda s: -s[0] * s[1])


def size_probe_photos(rounds: int) -> list[bytes]:
    """``rounds`` copies of a 720p photo cut to sizes no photo of the load has (2k px narrower, k px lower)."""
    import io

    import numpy as np
    from PIL import Image

    from bench.inputs import photo

    rgb = np.asarray(Image.open(io.BytesIO(photo("720p", 1))))
    new = []
    for k in range(1, rounds + 1):
        buf = io.BytesIO()
        Image.fromarray(rgb[: rgb.shape[0] - k, : rgb.shape[1] - 2 * k]).save(buf, format="JPEG", quality=90)
        new.append(buf.getvalue())
    return new


def size_probe(base_url: str, rounds: int, deadline: float) -> dict[str, float | None]:
    """Median latency (ms, idle server) of 720p photos the first time the server sees their size and the
    second: each photo twice in a row, so that the size, not the photo, is what differs."""
    import httpx
    import numpy as np

    times: dict[str, list[float]] = {"new": [], "seen": []}
    with httpx.Client(base_url=base_url) as http:
        def post(data: bytes) -> float:
            start = time.perf_counter()
            r = http.post("/v1/analyze", files={"image": ("probe.jpg", data, "image/jpeg")},
                          timeout=max(1.0, deadline - time.monotonic()))
            r.raise_for_status()
            return time.perf_counter() - start

        for data in size_probe_photos(rounds):
            times["new"].append(post(data))
            times["seen"].append(post(data))
    seen_ms, new_ms = (round(float(np.median(times[k])) * 1000, 1) for k in ("seen", "new"))
    return {"seen_720p_ms": seen_ms, "new_720p_ms": new_ms, "new_over_seen": round(new_ms / seen_ms, 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``python -m core.api`` on 127.0.0.1:``port`` in a subprocess, its output in a temporary log file."""

    def __init__(self, port: int, *, models_dir: str | None = None, max_queue: int | None = None,
                 workers: int | None = None, max_queue_mb: int | None = None, env: dict[str, str] | None = None):
        self.port = port
        self.url = f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "core.api", "--host", HOST, "--port", str(port)]
        for flag, value in (("--models-dir", models_dir), ("--max-queue", max_queue), ("--workers", workers),
                            ("--max-queue-mb", max_queue_mb)):
            if value:
                cmd += [flag, str(value)]
        self.log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by stop()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def log_tail(self, chars: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def wait_healthy(self, until: float) -> dict:
        """Poll ``/healthz`` until the models are loaded (its first call loads them), the server dies or
        ``until`` (a ``time.monotonic()`` instant) passes."""
        import httpx

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the server did not become healthy in time:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/healthz", timeout=max(1.0, left))
            except httpx.TransportError:
                time.sleep(min(0.5, left))
                continue
            body = r.json()
            if body.get("status") != "ok":
                raise RuntimeError(f"the server is up but not healthy: {body}")
            return body

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.log.close()


@dataclass
class Answer:
    index: int
    photo: str
    status: str  # the HTTP status code, or the name of the transport error
    latency_s: float
    ok: bool  # 200 with a well-formed body, or 503 busy with JSON and Retry-After
    faces: int | None = None
    detail: str = ""


@dataclass
class LoadRun:
    """Shared state of the client threads: the next request to send, the answers, the RSS sample."""

    total: int
    deadline: float  # time.monotonic()
    rss_after: int
    server_pid: int
    answers: list[Answer] = field(default_factory=list)
    next_index: int = 0
    rss_first: tuple[float, float] | None = None
    rss_series: dict[int, float] = field(default_factory=dict)  # answers so far -> RSS in MB
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int | None:
        with self.lock:
            if self.next_index >= self.total or time.monotonic() >= self.deadline:
                return None
            self.next_index += 1
            return self.next_index - 1

    def record(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)
            if len(self.answers) % self.rss_after == 0:
                sample = rss_mb(self.server_pid)
                self.rss_series[len(self.answers)] = round(sample[0], 1)
                if len(self.answers) == self.rss_after:
                    self.rss_first = sample


def check_answer(index: int, name: str, response, latency_s: float) -> tuple[Answer, float]:
    """Classify one response; also return how long the client should wait before its next request."""
    status = str(response.status_code)
    try:
        body = response.json()
    except ValueError:
        return Answer(index, name, status, latency_s, False, detail=f"not JSON: {response.text[:200]!r}"), 0.0
    if response.status_code == 200:
        ok = isinstance(body, dict) and isinstance(body.get("faces"), list) and isinstance(body.get("image"), dict)
        return Answer(index, name, status, latency_s, ok, faces=len(body["faces"]) if ok else None,
                      detail="" if ok else f"malformed body: {str(body)[:200]}"), 0.0
    retry_after = response.headers.get("retry-after", "")
    if response.status_code == 503 and isinstance(body, dict) and body.get("error") == "busy" \
            and retry_after.isdigit():
        return Answer(index, name, status, latency_s, True, detail="busy"), float(retry_after)
    return Answer(index, name, status, latency_s, False, detail=str(body)[:200]), 0.0


def client_loop(run: LoadRun, base_url: str, photos: list[tuple[str, bytes]], order: list[int]) -> None:
    """One client: takes the next request number until none is left or the deadline passes."""
    import httpx

    with httpx.Client(base_url=base_url) as http:
        while (i := run.take()) is not None:
            name, data = photos[order[i]]
            timeout = max(0.1, run.deadline - time.monotonic())
            start = time.perf_counter()
            try:
                kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
                response = http.post("/v1/analyze", files={"image": (name, data, kind)}, timeout=timeout)
                answer, wait = check_answer(i, name, response, time.perf_counter() - start)
            except httpx.HTTPError as exc:
                answer, wait = Answer(i, name, type(exc).__name__, time.perf_counter() - start, False,
                                      detail=str(exc)[:200]), 0.0
            run.record(answer)
            if wait:
                time.sleep(max(0.0, min(wait, run.deadline - time.monotonic())))


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)) * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=500, help="requests in all (default 500)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--max-queue", type=int, help="the server's --max-queue (default: its own default)")
    parser.add_argument("--max-queue-mb", type=int, help="the server's --max-queue-mb (default: its own default)")
    parser.add_argument("--workers", type=int, help="the server's --workers (default: its own default)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--models-dir", help="the server's --models-dir (default: models/ or AGEGENDER_MODELS_DIR)")
    parser.add_argument("--deadline", type=float, default=1800.0,
                        help="seconds for the whole run, server start included (default 1800)")
    parser.add_argument("--rss-after", type=int,
                        help="sample the server's RSS after this many answers (default: 50, or half the requests "
                             "when fewer than 100)")
    parser.add_argument("--rss-ratio", type=float, default=1.2, help="largest end / first RSS ratio (default 1.2)")
    parser.add_argument("--max-rss-mb", type=float, default=1000.0,
                        help="largest peak RSS of the server in MB (default 1000; 0: no budget)")
    parser.add_argument("--photos", help=f"a folder of photos to send, or {SYNTHETIC!r} (default: {DEFAULT_PHOTOS} "
                                         "where it exists, else synthetic)")
    parser.add_argument("--size-probe", type=int, default=8,
                        help="requests of a new and of a seen 720p size after the load (default 8; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo order (default 0)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.deadline <= 0:
        parser.error("--clients, --requests and --deadline must be positive")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    rss_after = args.rss_after or min(50, max(1, args.requests // 2))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    deadline = time.monotonic() + args.deadline

    photos = bench_photos(args.photos)
    rng = random.Random(args.seed)
    order = [i % len(photos) for i in range(args.requests)]
    rng.shuffle(order)

    t0 = time.monotonic()
    server = Server(args.port or free_port(), models_dir=args.models_dir, max_queue=args.max_queue,
                    workers=args.workers, max_queue_mb=args.max_queue_mb,
                    env=dict(item.split("=", 1) for item in args.server_env))
    try:
        health = server.wait_healthy(deadline)
        startup_s = time.monotonic() - t0
        rss_idle = rss_mb(server.proc.pid)
        run = LoadRun(args.requests, deadline, rss_after, server.proc.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients, thread_name_prefix="client") as pool:
            for future in [pool.submit(client_loop, run, server.url, photos, order) for _ in range(args.clients)]:
                future.result()
        wall_s = time.perf_counter() - start
        server_alive = server.proc.poll() is None
        rss_end = rss_mb(server.proc.pid) if server_alive else None
        probe = {}
        if server_alive and args.size_probe > 0 and time.monotonic() < deadline:
            probe = size_probe(server.url, args.size_probe, deadline)
        server_alive = server.proc.poll() is None
        rss_peak = rss_mb(server.proc.pid)[1] if server_alive else None
    finally:
        log_tail = server.log_tail() if server.proc.poll() is not None else ""
        server.stop()

    from core.api import max_queue_setting, workers_setting
    from core.hardware import cpu_description

    answers = sorted(run.answers, key=lambda a: a.index)
    counts = Counter(a.status for a in answers)
    errors = [a for a in answers if not a.ok]
    ok_latencies = [a.latency_s for a in answers if a.status == "200"]
    faces: dict[str, Counter] = {}
    for a in answers:
        if a.faces is not None:
            faces.setdefault(a.photo, Counter())[a.faces] += 1
    rss_first = run.rss_first
    ratio = round(rss_end[0] / rss_first[0], 3) if rss_first and rss_end else None
    memory_flat = ratio is not None and ratio <= args.rss_ratio
    within_budget = rss_peak is not None and (not args.max_rss_mb or rss_peak <= args.max_rss_mb)
    finished = len(answers) == args.requests
    summary = {
        "machine": (f"{cpu_description()}, models on {health.get('runtime', '?')} "
                    f"in {health.get('precision', '?')}"),
        "clients": args.clients,
        "requests": args.requests,
        "answered": len(answers),
        "finished": finished,
        "max_queue": max_queue_setting(args.max_queue),
        "workers": workers_setting(args.workers),
        "photos": len(photos),
        "photo_sizes": len(photo_sizes(photos)),
        "startup_s": round(startup_s, 1),
        "wall_s": round(wall_s, 1),
        "throughput_rps": round(len(answers) / wall_s, 3),
        "ok_rps": round(counts.get("200", 0) / wall_s, 3),
        "latency_p50_ms": percentile_ms(ok_latencies, 50),
        "latency_p95_ms": percentile_ms(ok_latencies, 95),
        "latency_max_ms": percentile_ms(ok_latencies, 100),
        "status_counts": dict(sorted(counts.items())),
        "errors": len(errors),
        "error_samples": [f"#{a.index} {a.photo}: {a.status} {a.detail}" for a in errors[:5]],
        "faces_by_photo": {name: dict(sorted(c.items())) for name, c in sorted(faces.items())},
        "rss_mb_idle": round(rss_idle[0], 1),
        "rss_sampled_after": rss_after,
        "rss_mb_first": round(rss_first[0], 1) if rss_first else None,
        "rss_mb_end": round(rss_end[0], 1) if rss_end else None,
        "rss_ratio": ratio,
        "rss_peak_mb": round(rss_peak, 1) if rss_peak else None,
        "rss_budget_mb": args.max_rss_mb or None,
        "within_budget": within_budget,
        "rss_mb_every": run.rss_series,
        "memory_flat": memory_flat,
        **probe,
        "server_alive": server_alive,
    }
    print(f"machine: {summary['machine']}; {args.clients} clients, {len(answers)}/{args.requests} answered in "
          f"{wall_s:.1f} s ({summary['throughput_rps']} requests/s, {summary['ok_rps']} OK/s); server up in "
          f"{startup_s:.1f} s")
    print(f"status codes: {summary['status_counts']}; errors: {len(errors)}")
    for line in summary["error_samples"]:
        print(f"  {line}")
    print(f"latency of the 200s: p50 {summary['latency_p50_ms']} ms, p95 {summary['latency_p95_ms']} ms, "
          f"max {summary['latency_max_ms']} ms")
    print(f"photos: {len(photos)} of {summary['photo_sizes']} sizes; server RSS: idle {summary['rss_mb_idle']} MB, "
          f"after {rss_after} answers {summary['rss_mb_first']} MB, end {summary['rss_mb_end']} MB (x{ratio}, flat: "
          f"{memory_flat}), peak {summary['rss_peak_mb']} MB (budget {args.max_rss_mb or 'none'}: "
          f"{'within' if within_budget else 'OVER'})")
    if probe:
        print(f"720p, idle server: a seen size {probe['seen_720p_ms']} ms, a new size {probe['new_720p_ms']} ms "
              f"(x{probe['new_over_seen']})")
    if log_tail:
        print(f"the server died:\n{log_tail}", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if (finished and not errors and memory_flat and within_budget and server_alive) else 1


if __name__ == "__main__":
    sys.exit(main())
