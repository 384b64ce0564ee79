"""Speed of this working tree against an earlier revision, alternating runs on the same inputs.

    python -m bench.ab --base f60e4ff [--rounds 2] [--repeats 25]

Single runs on a shared machine vary by tens of percent from minute to minute, so a before/after claim
needs both sides measured close together. This checks out ``--base`` into a temporary git worktree (with
this tree's ``models/``, so only code differs), then runs ``bench/probe.py`` against the base tree and
this tree in turn, ``--rounds`` times each, in fresh processes. Each probe times ``core.analyze`` and the
detector alone on the benchmark photos (warm medians) and batch throughput on chips. Printed: the median over
rounds per side and the ratio this/base (< 1 latency: faster now; > 1 chips/s: faster now); the last line is
one JSON object.

``--base-env KEY=VALUE`` (repeatable) sets a variable for the base side only: e.g. the old code's choice of
precision where this machine differs from the one compared for (``AGEGENDER_PRECISION=float32`` for code that
would pick bf16 on a CPU emulating AVX2 with ``ONEDNN_MAX_CPU_ISA=AVX2``), while this tree runs its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "probe.py"


def run_probe(tree: Path, manifest: Path, repeats: int, extra_env: dict[str, str] | None = None) -> dict:
    """One probe process that imports ``core`` from ``tree`` (``extra_env`` added to its environment)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3",
           "AGEGENDER_MODELS_DIR": str(ROOT / "models"), **(extra_env or {})}
    r = subprocess.run([sys.executable, str(PROBE), str(manifest), str(repeats)], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"probe failed in {tree}: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. main, a commit)")
    parser.add_argument("--rounds", type=int, default=2, help="probe runs per side, alternating")
    parser.add_argument("--repeats", type=int, default=25, help="timed calls per photo in each probe")
    parser.add_argument("--chips", type=int, default=256, help="chips for the throughput test")
    parser.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the base side only (repeatable)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.base_env):
        parser.error("--base-env takes KEY=VALUE")
    base_env = dict(item.split("=", 1) for item in args.base_env)

    from bench.inputs import write_inputs

    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base), args.base], cwd=ROOT,
                       check=True)
        try:
            manifest = write_inputs(Path(tmp) / "inputs", args.chips)
            manifest_path = Path(tmp) / "manifest.json"
            manifest_path.write_text(json.dumps(manifest))
            runs: dict[str, list[dict]] = {"base": [], "this": []}
            for _ in range(args.rounds):
                for side, tree in (("base", base), ("this", ROOT)):
                    runs[side].append(run_probe(tree, manifest_path, args.repeats,
                                                base_env if side == "base" else None))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
            shutil.rmtree(base, ignore_errors=True)

    summary: dict = {"base": args.base, "rounds": args.rounds, "repeats": args.repeats, "base_env": base_env}
    print(f"{'metric':<24}{'base':>10}{'this':>10}{'this/base':>11}")
    for key in runs["this"][0]:
        b = statistics.median(r[key] for r in runs["base"])
        t = statistics.median(r[key] for r in runs["this"])
        ratio = round(t / b, 3) if b else None
        print(f"{key:<24}{b:>10.1f}{t:>10.1f}{ratio if ratio is not None else float('nan'):>11.3f}")
        summary.update({f"base_{key}": round(b, 2), f"this_{key}": round(t, 2), f"ratio_{key}": ratio})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
