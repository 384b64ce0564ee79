"""MTCNN landmarks of every image of a dataset, stored in the repository next to its split lists.

    python -m train.landmarks --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf
    python -m train.landmarks --data-dir ../shared/data/aaf --force      # recompute every image
    python -m train.landmarks --data-dir ../shared/data/utkface --check 300  # stored == detected now?

Training on the app's crop (``--crop aligned``) needs the landmarks of the largest face MTCNN finds on each
image, exactly as the app detects it (:func:`core.detect.detect_faces`); the crop is then
:func:`core.crop.crop_face`. Computing them takes up to an hour for ~30k images and ``.cache/`` does not travel
between machines, so they live in ``train/splits/<dataset>/landmarks.npz``:

- ``names``: file names (relative to the dataset folder), sorted;
- ``sizes``: each file's size in bytes, so an entry is not used for a different file of the same name;
- ``landmarks``: float32 (N, 5, 2) in image pixels, :data:`core.detect.LANDMARK_NAMES` order, NaN for no face;
- ``header``: JSON with the detector version (:data:`core.detect.DETECTOR_VERSION`), its settings, the
  ``mtcnn`` package version, the dataset, the date, and how many images had a face.

:func:`train.data.chip_landmarks` reads this file first and computes only what is missing; a file made by
another detector version is ignored with a warning. This command computes or refreshes it: without
``--force`` entries of the current version are kept and only missing names are computed. ``--check N``
writes nothing: it detects N stored images again (seeded sample) and reports how many give the stored
landmarks, the largest difference, and faces lost or gained: the test for whether a change of the detector's
code must bump :data:`core.detect.DETECTOR_VERSION`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from train import landmark_store  # detect_landmarks through the module: tests replace it there
from train.data import Source, load_or_make_split, sources
from train.landmark_store import Table, compute, is_current, lookup, read_current, read_landmarks, write_landmarks


def refresh(data_dir: Path, split_dir: Path | None = None, *, force: bool = False, limit: int | None = None,
            log=print) -> dict:
    """Compute the landmarks of every image of the dataset's split (train, val and test) that the store in
    ``split_dir`` lacks (all of them with ``force``) and save the store; return its header."""
    src = Source.of(data_dir, split_dir)
    split = load_or_make_split(src.data_dir, src.split_dir, log=log)
    names = sorted(s.name for part in split.values() for s in part)[:limit]
    path = src.landmarks_file
    stored = read_landmarks(path)
    if stored and not is_current(stored[1]):
        log(f"{path}: made by detector {stored[1].get('detector')!r}; recomputing everything")
    base = read_current(path, warn=False)  # entries of the current detector version, kept for other names too
    keep = np.zeros(len(names), bool)
    if not force:
        lookup(base, src.data_dir, names, np.zeros((len(names), 5, 2), np.float32), keep)
    todo = [n for n, k in zip(names, keep) if not k]
    log(f"{src.name}: {len(names)} images in the split, {len(names) - len(todo)} already in {path}, "
        f"computing {len(todo)}")
    started = time.perf_counter()

    def save(done: Table) -> dict:
        return write_landmarks(path, {**base, **done}, dataset=src.name)

    done = compute(src.data_dir, todo, progress=100, label=src.name, checkpoint=save)
    header = save(done) if done or not stored or not is_current(stored[1]) else stored[1]
    final = {**base, **done}
    n_face = sum(not np.isnan(final[n][1]).any() for n in names)
    log(f"{src.name}: {n_face} of {len(names)} images have a face ({n_face / max(len(names), 1):.1%}), "
        f"{len(names) - n_face} without; {len(todo)} computed in {(time.perf_counter() - started) / 60:.1f} min "
        f"-> {path}")
    return header


def check(data_dir: Path, split_dir: Path | None = None, *, sample: int = 300, seed: int = 0) -> dict:
    """Detect ``sample`` stored images of the dataset again (seeded) and compare with the store: how many
    are identical (both no face, or every landmark within 1e-3 px), the largest landmark difference in px
    over images with a face both times, and faces lost (stored, none now) or gained."""
    src = Source.of(data_dir, split_dir)
    stored = read_landmarks(src.landmarks_file)
    if stored is None:
        raise FileNotFoundError(f"no landmarks stored in {src.landmarks_file}: python -m train.landmarks "
                                f"--data-dir {data_dir}")
    table, header = stored
    names = [n for n in sorted(table) if (src.data_dir / n).is_file()]
    names = random.Random(seed).sample(names, min(sample, len(names)))
    identical, lost, gained, worst = 0, 0, 0, 0.0
    for name in names:
        before, now = table[name][1], landmark_store.detect_landmarks(src.data_dir / name)
        had, has = not np.isnan(before).any(), not np.isnan(now).any()
        lost, gained = lost + (had and not has), gained + (has and not had)
        if had and has:
            diff = float(np.abs(now - before).max())
            worst = max(worst, diff)
            identical += diff < 1e-3
        else:
            identical += had == has
    return {"dataset": src.name, "store": str(src.landmarks_file), "stored_detector": header.get("detector"),
            "checked": len(names), "identical": identical, "max_diff_px": round(worst, 3), "faces_lost": lost,
            "faces_gained": gained}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.landmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="a dataset folder (repeat for several)")
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="its split folder, one per --data-dir in the same order (default train/splits/<dataset>)")
    parser.add_argument("--force", action="store_true", help="recompute every image, not only missing ones")
    parser.add_argument("--limit", type=int, help="only the first N names of the split (for a quick check)")
    parser.add_argument("--check", type=int, metavar="N",
                        help="write nothing: detect N stored images again and compare with the store")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        for src in sources(args.data_dir, args.split_dir).values():
            if args.check:
                r = check(src.data_dir, src.split_dir, sample=args.check)
                print(f"{r['dataset']}: {r['identical']} of {r['checked']} images as stored (by "
                      f"{r['stored_detector']}), largest landmark difference {r['max_diff_px']} px, "
                      f"{r['faces_lost']} faces lost, {r['faces_gained']} gained", flush=True)
                print(json.dumps(r))
            else:
                refresh(src.data_dir, src.split_dir, force=args.force, limit=args.limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
