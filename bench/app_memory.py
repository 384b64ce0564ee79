"""The Streamlit app's memory after many uploads: one server process, several visitors, real photos.

    python -m bench.app_memory [--uploads 50] [--sessions 5] [--photos DIR|synthetic] [--json PATH]

No browser is needed: the upload page runs in this process through Streamlit's ``AppTest``, one instance per
visitor (session), as the server would run it, with two things made as in a real server: one media file
manager for the whole process, kept across runs (the server's: an image or download of a session's last run
stays stored until its next run), and a session id of its own per visitor. ``--uploads`` photos (those of
``python -m bench.load``, cycled) are added one at a time to the visitors' uploaders in turn, each upload a
run of the page; every visitor stays connected to the end, holding what its last run showed.

Reported after each upload and at the end: the process's RSS, the bytes the media manager holds (the shown
images and the downloads), the photos the sessions hold, and seconds per upload. The last line is one JSON
object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.load import bench_photos
from core import memory

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "pages" / "1_Photo_upload.py"


class ServerLike:
    """AppTest's runs made to share one media file manager and to carry their own session ids."""

    def __init__(self) -> None:
        from streamlit.runtime.media_file_manager import MediaFileManager
        from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
        from streamlit.runtime.scriptrunner import script_runner
        from streamlit.testing.v1 import app_test

        self.storage = MemoryMediaFileStorage("/media")
        self.media = MediaFileManager(self.storage)
        self.session = "session-0"
        app_test.MediaFileManager = lambda _storage: self.media
        init = script_runner.ScriptRunner.__init__
        server = self

        def with_session(runner, *args, session_id: str, **kwargs) -> None:
            init(runner, *args, session_id=server.session, **kwargs)

        script_runner.ScriptRunner.__init__ = with_session

    def media_mb(self) -> float:
        return sum(len(f.content) for f in self.storage._files_by_id.values()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=50, help="photos uploaded in all (default 50)")
    parser.add_argument("--sessions", type=int, default=5, help="visitors, each a session (default 5)")
    parser.add_argument("--photos", help="a folder of photos, or 'synthetic' (default: as python -m bench.load)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.uploads < 1 or args.sessions < 1:
        parser.error("--uploads and --sessions must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from streamlit.testing.v1 import AppTest

    photos = bench_photos(args.photos)
    server = ServerLike()
    visitors: list[tuple[AppTest, list]] = []
    for i in range(args.sessions):
        server.session = f"session-{i}"
        visitors.append((AppTest.from_file(str(PAGE), default_timeout=1800).run(), []))
    start = {"rss_mb": round(memory.rss_mb()[0], 1)}
    series: list[dict[str, Any]] = []
    for n in range(args.uploads):
        k = n % args.sessions
        at, files = visitors[k]
        name, data = photos[n % len(photos)]
        kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
        files.append((f"{n:02d}_{Path(name).stem}.{kind}", data, f"image/{kind}"))
        server.session = f"session-{k}"
        t = time.perf_counter()
        at.file_uploader[0].set_value(list(files)).run()
        if at.exception:
            raise RuntimeError(f"upload {n + 1}: {at.exception[0].message}")
        series.append({"uploads": n + 1, "seconds": round(time.perf_counter() - t, 2),
                       "rss_mb": round(memory.rss_mb()[0], 1), "media_mb": round(server.media_mb(), 1),
                       "shown": len(at.subheader)})
        print(json.dumps(series[-1]), flush=True)
    gc.collect()
    held = sum(len(d) for _, files in visitors for _, d, _ in files) / 1e6
    rss, peak = memory.rss_mb()
    out = {"uploads": args.uploads, "sessions": args.sessions, "photos": len(photos), "start": start,
           "end": {"rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1), "media_mb": round(server.media_mb(), 1),
                   "uploads_held_mb": round(held, 1)},
           "seconds_per_upload": round(sum(s["seconds"] for s in series) / len(series), 2),
           "rss_after_each": [s["rss_mb"] for s in series], "media_after_each": [s["media_mb"] for s in series]}
    print(f"{args.uploads} uploads over {args.sessions} sessions: RSS {start['rss_mb']} MB with the page loaded, "
          f"{out['end']['rss_mb']} MB at the end (peak {out['end']['peak_rss_mb']} MB); media stored "
          f"{out['end']['media_mb']} MB; uploads held {out['end']['uploads_held_mb']} MB; "
          f"{out['seconds_per_upload']} s per upload")
    text = json.dumps(out)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
