"""The command lines of ``python -m train``: every option, its default and its check, without TensorFlow.

``python -m train --help`` and a mistyped option answer at once: this module imports nothing heavy, and each
option's type refuses a value that makes no sense with one line (argparse's ``error``, exit status 2) before
any data or model is touched. The training modules import their constants from here.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

TASKS = ("multitask", "age", "gender")
AUGMENTATIONS = ("basic", "photo")
PRECISIONS = ("auto", "bfloat16", "float32")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and every option's default after its help."""


def plain(doc: str | None) -> str:
    """A module docstring as help text: Sphinx roles and double backquotes dropped."""
    text = re.sub(r":(?:mod|func|class|meth|data|attr):`~?([^`]+)`", r"\1", doc or "")
    return text.replace("``", "")


def _number(kind, name: str, low: float | None = None, high: float | None = None, *, above: bool = False):
    """An argparse type: ``kind`` within [low, high] (``above``: strictly above ``low``)."""
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {name}") from None
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if above else 'at least'} {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be at most {high}")
        return value
    return check


positive_int = _number(int, "whole number", 1)
non_negative_int = _number(int, "whole number", 0)
positive_float = _number(float, "number", 0.0, above=True)
fraction = _number(float, "number", 0.0, 1.0)


def folder(text: str) -> Path:
    """An existing folder."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """``"64:6,96:4"`` -> [(64, 6), (96, 4)]: input size and epochs per phase (progressive resizing)."""
    try:
        phases = [(int(size), int(epochs)) for size, _, epochs in (p.partition(":") for p in text.split(","))]
    except ValueError:
        phases = []
    if not phases or any(s < 32 or e < 1 for s, e in phases):
        raise ValueError(f"bad schedule {text!r}: expected SIZE:EPOCHS[,SIZE:EPOCHS...], size >= 32, epochs >= 1")
    return phases


def parse_stages(text: str) -> list[list[int]]:
    """``"64:1800000,96:600000"`` -> [[64, 1800000], [96, 600000]]: input size and images per stage."""
    try:
        stages = [[int(size), int(images)] for size, _, images in (p.partition(":") for p in text.split(","))]
    except ValueError:
        stages = []
    if not stages or any(s < 32 or n < 1 for s, n in stages):
        raise ValueError(f"bad stages {text!r}: expected SIZE:IMAGES[,SIZE:IMAGES...], size >= 32")
    return stages


def parse_dataset_weights(text: str) -> dict[str, float]:
    """``"utkface=1,aaf=2"`` -> {"utkface": 1.0, "aaf": 2.0}."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not name.strip() or weight is None or weight < 0:
            raise argparse.ArgumentTypeError(f"bad dataset weights {text!r}: expected NAME=WEIGHT[,NAME=WEIGHT...] "
                                             "with weights >= 0")
        out[name.strip()] = weight
    return out


def _checked(parse, *, keep_text: bool = False):
    """An argparse type from a parser that raises ``ValueError`` with its own message; ``keep_text``: the
    value stays the text as typed (it is recorded and parsed again later), once it parses."""
    def check(text: str):
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text if keep_text else value
    return check


TRAIN_HELP = """Train the age, gender or multitask (backbone) model, or continue the backbone's campaign.

    python -m train age --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf --init campaign
    python -m train gender --data-dir ... --resume          # continue an interrupted run from its last epoch
    python -m train age --data-dir ../shared/data/utkface --limit 64 --schedule 32:1   # a smoke run
    python -m train campaign --help                         # the backbone campaign

A run lives in --run-dir (default runs/<task>): config.json, checkpoint.keras (every epoch), history.csv,
progress.json (the dashboard's live monitor). An age or gender run exports <task>_model.h5 with its metadata
to --out-dir (default models/; for a --limit smoke run, <run-dir>/models). Training uses bf16 where this CPU
runs it fast. README, "Training", says more."""


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=TRAIN_HELP, formatter_class=HelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data-dir", type=folder, action="append", required=True,
                   help="a dataset folder: UTKFace chips, All-Age-Faces crops, or any folder of images with a "
                        "labels.csv (file,age,gender[,race,person]); repeat to train on several")
    p.add_argument("--dataset-weights", type=parse_dataset_weights,
                   help="NAME=WEIGHT,... sampling weight of each dataset (names: utkface, aaf, or a labels.csv "
                        "folder's name); default: proportional to each dataset's training images. Larger weights "
                        "show a dataset's faces more often, at the price of repeating them")
    p.add_argument("--augment", choices=AUGMENTATIONS, default="photo",
                   help="photo: flip and crop jitter plus blur, low resolution, JPEG artefacts, colour, grayscale, "
                        "old photographs and occlusion, as faces in real photos; basic: flip, rotation, zoom, "
                        "shift, brightness, contrast")
    p.add_argument("--schedule", type=_checked(parse_schedule, keep_text=True), default="64:6,96:4",
                   help="progressive resizing, SIZE:EPOCHS,...; the last size is the model's input size")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--warmup-epochs", type=_number(float, "number", 0.0), default=1.0)
    p.add_argument("--weight-decay", type=_number(float, "number", 0.0), default=1e-4,
                   help="AdamW decoupled weight decay")
    p.add_argument("--init", default="scratch",
                   help="scratch | campaign (the backbone campaign's weights in models/campaign) | vggface "
                        "(rcmalli no-top weights from --vggface-weights) | PATH of a model.keras from an earlier "
                        "run, of a shipped model .h5 (continue training it) or of an rcmalli .h5")
    p.add_argument("--vggface-weights", default=os.environ.get("VGGFACE_WEIGHTS"),
                   help="rcmalli_vggface_tf_notop_vgg16.h5 (or set VGGFACE_WEIGHTS)")
    p.add_argument("--freeze-blocks", type=_number(int, "whole number", 0, 5), default=0,
                   help="freeze VGG blocks 1..N")
    p.add_argument("--crop", choices=("aligned", "chip"), default="aligned",
                   help="aligned: each chip's face found by MTCNN and cropped onto the chip template, as the app "
                        "does; chip: the chip as it is")
    p.add_argument("--patience", type=positive_int, default=4, help="early stopping patience (epochs, final size)")
    p.add_argument("--run-dir", type=Path, help="default runs/<task>")
    p.add_argument("--out-dir", type=Path,
                   help="where age/gender models go (default: models/, the app's models; with --limit, a smoke "
                        "run, <run-dir>/models, so that it never replaces the shipped models unless asked)")
    p.add_argument("--split-dir", type=Path, action="append",
                   help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    p.add_argument("--limit", type=positive_int,
                   help="use only N training and N//4 validation samples of each dataset (smoke runs)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: mixed_bfloat16 on a GPU and on a CPU with bf16 math where bf16 measured faster "
                        "than float32, float32 elsewhere")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--until-epoch", type=positive_int,
                   help="stop once this many epochs of the schedule are done in all (with --resume: idempotent)")
    p.add_argument("--max-epochs", type=positive_int,
                   help="stop after this many epochs in this invocation (continue later with --resume)")
    p.add_argument("--epoch-images", type=positive_int,
                   help="images per epoch, drawn with --dataset-weights (default: as many as the training sets "
                        "hold together)")
    p.add_argument("--age-balance", type=fraction, default=0.0,
                   help="0 to 1: draw training images by 5-year age bin, each bin of n images in proportion to "
                        "n**(1-B); 0 keeps each dataset's own age mix, 1 shows every bin equally often")
    p.add_argument("--no-cache", action="store_true",
                   help="do not cache decoded chips (nor computed landmarks) in .cache/")
    return p


CAMPAIGN_HELP = """Continue (or start) the backbone campaign: the multitask network trained from scratch for
millions of images, in stretches on whatever machine is at hand (docs/campaign.md).

    python -m train campaign --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf \\
                             --data-dir ../shared/data/lfw          # start it, or continue it
    python -m train campaign --hours 3                              # continue (folders from the plan)
    touch runs/campaign/STOP                                        # end the stretch after this chunk

Everything the next machine needs is written to models/campaign/ after every chunk of the plan and every
--save-every seconds within one; commit that folder at the end of a stretch."""


def build_campaign_parser(default_folder: Path, default_run_dir: Path) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train campaign", description=CAMPAIGN_HELP,
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", type=folder, action="append",
                   help="a dataset folder (repeat); default: the folders the campaign was started with")
    p.add_argument("--split-dir", type=Path, action="append",
                   help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
    p.add_argument("--hours", type=positive_float, help="stop after the chunk that passes this many hours")
    p.add_argument("--until-images", type=positive_int, help="stop once the campaign has seen this many images")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--save-every", type=_number(float, "number", 0.0), default=180.0,
                   help="seconds between checkpoints within a chunk (a chunk's end always saves)")
    p.add_argument("--folder", type=Path, default=default_folder, help="the campaign's committed state")
    p.add_argument("--run-dir", type=Path, default=default_run_dir,
                   help="where the live monitor's progress.json goes")
    p.add_argument("--no-cache", action="store_true", help="do not cache decoded chips in .cache/")
    new = p.add_argument_group("a new campaign (ignored when one exists in --folder)")
    new.add_argument("--stages", type=_checked(parse_stages), default=None,
                     help="SIZE:IMAGES,... (default 64:1800000,96:600000)")
    new.add_argument("--dataset-weights", type=parse_dataset_weights,
                     help="NAME=WEIGHT,... share of each dataset (default: proportional to its training images)")
    new.add_argument("--age-balance", type=fraction, default=0.5, help="0..1, as python -m train --age-balance")
    new.add_argument("--chunk-images", type=positive_int, default=6400)
    new.add_argument("--batch-size", type=positive_int, default=64)
    new.add_argument("--lr", type=positive_float, default=1e-3)
    new.add_argument("--augment", choices=AUGMENTATIONS, default="photo")
    new.add_argument("--limit", type=positive_int,
                     help="only N training and N//4 validation images per dataset (tests)")
    new.add_argument("--seed", type=int, default=20261206)
    return p
