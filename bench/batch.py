"""Batch engines compared: ``python -m core batch`` on the local engine and on Ray, same machine, same files.

    python -m bench.batch [--data-dir DIR]... [--limit 240] [--rounds 2] [--batch-size 8] [--no-cluster]
                          [--json FILE]

Files: ``--limit`` UTKFace chips spread evenly over ``../shared/data/utkface`` and every photo of
``../shared/data/photos`` (or the ``--data-dir`` folders), else generated ones (bench/inputs.py). Each round
runs the command once per engine, alternating (local, ray, local, ray, ...), each in a new process writing CSV:
its summary's images/s counts from before the models load to the last row (Ray's start, reported apart, not
included); the wall time of the whole command is reported too. The rows of both engines are compared.

Then a 2-node cluster on this machine (``ray.cluster_utils.Cluster``, 2 logical CPUs per node, two model
actors) runs the same files, and the rows are counted per node for each stage. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SUMMARY = re.compile(r"(\d+) images, (\d+) faces, .* in ([\d.]+) s \(([\d.]+) images/s\)")
CONNECTED = re.compile(r"connected in ([\d.]+) s")


def gather_inputs(folder: Path, data_dirs: list[Path], limit: int) -> str:
    """Link (or write) the benchmark's files into ``folder``; say what they are."""
    folder.mkdir(parents=True, exist_ok=True)
    dirs = data_dirs or [d for d in (SHARED / "utkface", SHARED / "photos") if d.is_dir()]
    picked: list[Path] = []
    for d in dirs:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        step = max(1, len(files) // limit) if len(files) > limit else 1
        picked += files[::step][:limit]
    if picked:
        for i, f in enumerate(picked):
            (folder / f"{i:05d}{f.suffix.lower()}").symlink_to(f.resolve())
        return f"{len(picked)} files from {', '.join(str(d) for d in dirs)}"
    from bench.inputs import RESOLUTIONS, chips, photo

    for i, data in enumerate(chips(limit)):
        (folder / f"chip{i:05d}.jpg").write_bytes(data)
    for res in RESOLUTIONS:
        for faces in (1, 4):
            (folder / f"{res}_{faces}.jpg").write_bytes(photo(res, faces))
    return f"{limit} generated chips and {2 * len(RESOLUTIONS)} generated photos (no ../shared/data)"


def run_engine(engine: str, inputs: Path, out: Path, batch_size: int) -> dict:
    """One ``python -m core batch`` in a new process: its summary's numbers and its wall time."""
    cmd = [sys.executable, "-m", "core", "batch", str(inputs), "-o", str(out), "--engine", engine,
           "--batch-size", str(batch_size)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = SUMMARY.search(res.stderr)
    if res.returncode not in (0, 1) or not found:
        raise SystemExit(f"{engine} run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    connected = CONNECTED.search(res.stderr)
    return {"engine": engine, "images": int(found[1]), "faces": int(found[2]), "seconds": float(found[3]),
            "images_per_s": float(found[4]), "wall_s": round(wall, 2),
            "ray_start_s": float(connected[1]) if connected else None}


def compare_rows(a: Path, b: Path) -> dict:
    """Whether two CSV outputs hold the same rows: same files, faces and boxes; the largest age difference."""
    ra, rb = list(csv.DictReader(a.open())), list(csv.DictReader(b.open()))
    keys = ("file", "status", "face", "x", "y", "w", "h")
    same = [tuple(r[k] for k in keys) for r in ra] == [tuple(r[k] for k in keys) for r in rb]
    ages = [abs(float(x["age"]) - float(y["age"])) for x, y in zip(ra, rb, strict=False) if x["age"] and y["age"]]
    return {"same_faces": same, "max_age_diff": round(max(ages, default=0.0), 3)}


def cluster_run(inputs: Path, batch_size: int) -> dict:
    """The files on a 2-node cluster on this machine: rows per node for the read stage and the actor pool."""
    import ray
    from ray.cluster_utils import Cluster

    from core import engine_ray
    from core.batch import Settings, list_sources

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    try:
        engine_ray.start(nodes.address)
        sources = list_sources([str(inputs)])
        t0 = time.perf_counter()
        table = engine_ray.collect(engine_ray.rows_dataset(sources, Settings(), concurrency=2, batch_size=batch_size))
        seconds = time.perf_counter() - t0
        names = {n["NodeID"]: f"node{i + 1}" for i, n in enumerate(ray.nodes())}
        first = [r for r in table.to_pylist() if r["status"] != "ok" or r["face"] == 1]  # one row per image
        faces = [r for r in table.to_pylist() if r["status"] == "ok"]
        return {"nodes": len(names), "images": len(sources), "seconds": round(seconds, 1),
                "images_per_s": round(len(sources) / seconds, 2),
                "images_read_per_node": dict(Counter(names[r["read_node"]] for r in first)),
                "faces_predicted_per_node": dict(Counter(names[r["model_node"]] for r in faces))}
    finally:
        ray.shutdown()
        nodes.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", default=[], help="folders of images to use")
    parser.add_argument("--limit", type=int, default=240, help="images per folder (spread evenly)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each engine, alternating")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-cluster", action="store_true", help="skip the 2-node cluster run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        inputs = Path(tmp) / "inputs"
        what = gather_inputs(inputs, args.data_dir, args.limit)
        print(f"inputs: {what}", file=sys.stderr)
        runs: list[dict] = []
        for r in range(args.rounds):
            for engine in ("local", "ray"):
                run = run_engine(engine, inputs, Path(tmp) / f"{engine}{r}.csv", args.batch_size)
                runs.append(run)
                print(json.dumps(run), file=sys.stderr)
        pairs = [(a, b) for a, b in zip(runs[::2], runs[1::2], strict=True)]
        result = {
            "inputs": what, "cpus": os.cpu_count(), "runs": runs,
            "ray_over_local_images_per_s": [round(b["images_per_s"] / a["images_per_s"], 3) for a, b in pairs],
            "ray_over_local_wall": [round(b["wall_s"] / a["wall_s"], 3) for a, b in pairs],
            "rows": compare_rows(Path(tmp) / "local0.csv", Path(tmp) / "ray0.csv"),
        }
        result["median_ratio_images_per_s"] = round(statistics.median(result["ray_over_local_images_per_s"]), 3)
        if not args.no_cluster:
            result["cluster"] = cluster_run(inputs, args.batch_size)
    line = json.dumps(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
