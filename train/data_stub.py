"""TEMPORARY (issue #12, branch eval12): AAF-aware stand-ins for the multi-dataset ``train.data`` contract.

The evaluation needs ``scan``, ``load_or_make_split`` (``split_dir=None`` -> the dataset's own split) and
``dataset_name`` for All-Age-Faces folders. Those come with the multi-dataset ``train.data`` (branch
data12). Where ``train.data`` already has them, this module only re-exports them; otherwise it defines the
minimum to run the evaluation on an AAF folder. Delete this module at the merge and import from
``train.data``.

Differences from the real thing that matter: the stub's AAF split is written to ``.cache/splits/aaf/``
(never committed), so it is not the split that training on AAF will use.
"""

from __future__ import annotations

import re
from pathlib import Path

from train import data

if hasattr(data, "dataset_name"):  # the multi-dataset train.data is merged: use it
    from train.data import dataset_name, load_or_make_split, scan  # noqa: F401
else:
    AAF_RE = re.compile(r"^(\d{1,3})_([01])_aaf_(\d+)\.jpg$")

    def _images(data_dir: Path) -> list[Path]:
        return sorted(p for p in Path(data_dir).iterdir()
                      if p.is_file() and p.name.lower().endswith((".jpg", ".jpeg", ".png")))

    def dataset_name(data_dir: Path) -> str:
        """``"aaf"`` for a folder of AAF names, ``"utkface"`` for UTKFace names, else the folder's name."""
        names = [p.name for p in _images(data_dir)[:50]]
        if names and all(AAF_RE.match(n) for n in names):
            return "aaf"
        if any(data.parse_name(n) for n in names):
            return "utkface"
        return Path(data_dir).resolve().name

    def scan(data_dir: Path) -> tuple[list[data.Sample], list[str]]:
        if dataset_name(data_dir) != "aaf":
            return data.scan(data_dir)
        samples, malformed = [], []
        for path in _images(data_dir):
            m = AAF_RE.match(path.name)
            if m and 0 < int(m.group(1)) <= 116:
                samples.append(data.Sample(path.name, int(m.group(1)), int(m.group(2)), -1))
            else:
                malformed.append(path.name)
        return samples, malformed

    def load_or_make_split(data_dir: Path, split_dir: Path | None = None, *, seed: int = 42,
                           log=print) -> dict[str, list[data.Sample]]:
        if dataset_name(data_dir) != "aaf":
            return data.load_or_make_split(data_dir, split_dir or data.DEFAULT_SPLIT_DIR, seed=seed, log=log)
        split_dir = Path(split_dir or data.CACHE_DIR / "splits" / "aaf")
        samples, malformed = scan(data_dir)
        if malformed:
            log(f"skipped {len(malformed)} malformed file names, e.g. {malformed[:3]}")
        files = {k: split_dir / f"{k}.txt" for k in data.SPLITS}
        if not all(f.is_file() for f in files.values()):
            split = data.make_split(samples, [[s.name] for s in samples], seed=seed)
            split_dir.mkdir(parents=True, exist_ok=True)
            for k, f in files.items():
                f.write_text("\n".join(split[k]) + "\n")
            log(f"stub AAF split saved to {split_dir}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
        by_name = {s.name: s for s in samples}
        return {k: [by_name[n] for n in f.read_text().split() if n in by_name] for k, f in files.items()}
