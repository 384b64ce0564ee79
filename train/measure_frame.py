"""Measure where MTCNN puts the five landmarks on UTKFace chips: the chip frame that core/crop.py reproduces.

    python -m train.measure_frame --data-dir ../shared/data/utkface [--n 2000]

Prints the median landmark positions in a 200x200 chip, normalised to 0..1, which is
``core.crop.CHIP_TEMPLATE``; plus spread statistics so the choice can be judged.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from core.detect import detect_faces
from core.image import load_image
from train.options import HelpFormatter, folder, plain, positive_int

NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.measure_frame", description=plain(__doc__),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", type=folder, required=True)
    parser.add_argument("--n", type=positive_int, default=2000, help="number of chips sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    files = sorted(args.data_dir.glob("*.jpg"))
    if not files:
        print(f"error: no .jpg chips in {args.data_dir}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(files), size=min(args.n, len(files)), replace=False)
    points, missed = [], 0
    for i in picked:
        rgb = load_image(files[i])
        faces = detect_faces(rgb, min_face_size=40, threshold=0.9)
        if not faces:
            missed += 1
            continue
        h, w = rgb.shape[:2]
        pts = np.array([faces[0].landmarks[n] for n in NAMES], dtype=np.float64)
        points.append(pts / [w, h])
    arr = np.stack(points)
    median = np.median(arr, axis=0)
    report = {
        "chips": int(len(picked)),
        "no_face": missed,
        "template": {n: [round(float(x), 4) for x in median[k]] for k, n in enumerate(NAMES)},
        "iqr": {n: [round(float(x), 4) for x in (np.percentile(arr[:, k], 75, axis=0)
                                                  - np.percentile(arr[:, k], 25, axis=0))]
                for k, n in enumerate(NAMES)},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
