"""Two models on the same test faces: the paired differences and their bootstrap intervals.

    python -m train.evaluate --data-dir D --detect --json a.json                        # model A (models/)
    python -m train.evaluate --data-dir D --detect --json b.json --models-dir runs/cand  # model B
    python -m train.compare a.json b.json [--resamples 4000] [--seed 0]

Both files are ``train.evaluate --json`` outputs (per-image predictions). Only files scored by both are
compared (a face missed by one model is left out of both). For each metric, B - A on those faces, and a
95 % interval from resampling the faces with replacement (the same resample for both models, so what the
two share - which faces are hard - cancels): an interval that excludes 0 is a difference the split can
tell apart. Metrics: age MAE, age bias (mean signed error), MAE and bias under 20, gender accuracy.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: "Under 20": true age below this.
UNDER = 20


def paired(a: dict, b: dict) -> dict[str, np.ndarray]:
    """Per-face arrays of both models on the files both scored: true age/gender, A's and B's predictions."""
    pa = {p["file"]: p for p in a["predictions"]}
    pb = {p["file"]: p for p in b["predictions"]}
    files = sorted(set(pa) & set(pb))
    if not files:
        raise SystemExit("the two files have no scored image in common: were they made on the same split?")
    return {"files": np.array(files),
            "age": np.array([pa[f]["age"] for f in files], float),
            "female": np.array([pa[f]["gender"] == 1 for f in files]),
            "age_a": np.array([pa[f]["pred_age"] for f in files], float),
            "age_b": np.array([pb[f]["pred_age"] for f in files], float),
            "pf_a": np.array([pa[f]["p_female"] for f in files], float),
            "pf_b": np.array([pb[f]["p_female"] for f in files], float)}


def metrics(d: dict[str, np.ndarray], side: str, idx: np.ndarray) -> dict[str, float]:
    """The metrics of model ``side`` ("a"/"b") on the faces ``idx`` (indices, repeats allowed)."""
    err = d[f"age_{side}"][idx] - d["age"][idx]
    young = d["age"][idx] < UNDER
    correct = (d[f"pf_{side}"][idx] >= 0.5) == d["female"][idx]
    return {"age_mae": float(np.mean(np.abs(err))), "age_bias": float(np.mean(err)),
            "age_mae_under_20": float(np.mean(np.abs(err[young]))) if young.any() else float("nan"),
            "age_bias_under_20": float(np.mean(err[young])) if young.any() else float("nan"),
            "gender_accuracy": float(np.mean(correct))}


def compare(a: dict, b: dict, *, resamples: int = 4000, seed: int = 0) -> dict:
    """Each metric for A and B, B - A, and the 95 % bootstrap interval of B - A (paired over faces)."""
    d = paired(a, b)
    n = len(d["files"])
    everything = np.arange(n)
    ma, mb = metrics(d, "a", everything), metrics(d, "b", everything)
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {k: [] for k in ma}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        ra, rb = metrics(d, "a", idx), metrics(d, "b", idx)
        for k in ma:
            deltas[k].append(rb[k] - ra[k])
    out = {"n": n, "resamples": resamples, "metrics": {}}
    for k in ma:
        lo, hi = np.nanpercentile(deltas[k], [2.5, 97.5])
        out["metrics"][k] = {"a": round(ma[k], 4), "b": round(mb[k], 4), "b_minus_a": round(mb[k] - ma[k], 4),
                             "ci95": [round(float(lo), 4), round(float(hi), 4)]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="train.evaluate --json of model A (the reference)")
    parser.add_argument("b", type=Path, help="train.evaluate --json of model B (the candidate)")
    parser.add_argument("--resamples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = compare(json.loads(args.a.read_text()), json.loads(args.b.read_text()),
                     resamples=args.resamples, seed=args.seed)
    print(f"{result['n']} faces scored by both; B - A with 95 % intervals ({args.resamples} paired resamples)")
    for k, m in result["metrics"].items():
        scale = 100.0 if k == "gender_accuracy" else 1.0
        print(f"  {k:18s} A {scale * m['a']:8.3f}  B {scale * m['b']:8.3f}  B-A {scale * m['b_minus_a']:+7.3f}  "
              f"[{scale * m['ci95'][0]:+.3f}, {scale * m['ci95'][1]:+.3f}]")
    print(json.dumps({"a": str(args.a), "b": str(args.b), **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
