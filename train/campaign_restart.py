"""What a stretch boundary costs the campaign: a warm restart against an uninterrupted run, measured.

    python -m train.campaign_restart --warm 2 --chunks 3 [--json docs/campaign_restart.json]

Between stretches the campaign keeps its weights as bfloat16 and drops the AdamW moments
(:mod:`train.campaign_state`); the next stretch starts them afresh and ramps the learning rate back up. This
measures that, from the committed state, without changing it: ``--warm`` chunks are trained first (so the
moments are those of a running campaign), then the same ``--chunks`` chunks twice, on the same data order
and augmentation: (a) continuing in the same process, and (b) restarted as a new stretch would be, from the
weights rounded to bfloat16 with fresh moments and the re-warm ramp. Reported: each arm's training loss per
chunk and its validation per dataset at the end; the difference is the restart's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from train import campaign_state as cs


def _train(model, data, chunk: int, cursors: dict) -> tuple[float, dict]:
    ds, cursors = data.batches(chunk, cursors)
    hist = model.fit(ds, epochs=chunk + 1, initial_epoch=chunk, verbose=0, shuffle=False)
    return float(hist.history["loss"][-1]), cursors


def measure(args) -> dict:
    from core.hardware import cpu_description
    from train.campaign import CampaignData, build_network, evaluate, open_campaign
    from train.model import set_precision

    plan, srcs, splits = open_campaign(args)
    state, weights = cs.load_checkpoint(Path(args.folder))
    if weights is None:
        raise ValueError(f"no campaign state in {args.folder} to measure from")
    data = CampaignData(plan, srcs, splits, cache=not args.no_cache)
    policy = set_precision(args.precision)
    data.load(plan.size_at(state.images_seen))
    seen, chunk, cursors = state.images_seen, state.chunks_done, dict(state.cursors)
    model = build_network(plan, weights, seen, seed=plan.seed + chunk)
    started = time.perf_counter()
    for _ in range(args.warm):
        _, cursors = _train(model, data, chunk, cursors)
        seen, chunk = seen + plan.chunk_images, chunk + 1
    snapshot = {k: cs.from_bfloat16(cs.to_bfloat16(v)) for k, v in cs.model_weights(model).items()}
    at = {"images_seen": seen, "chunk": chunk, "cursors": dict(cursors)}
    arms = {}
    for arm in ("continued", "restarted"):
        if arm == "restarted":
            model = build_network(plan, snapshot, at["images_seen"], seed=plan.seed + at["chunk"])
        chunk, cursors, losses = at["chunk"], dict(at["cursors"]), []
        for _ in range(args.chunks):
            loss, cursors = _train(model, data, chunk, cursors)
            losses.append(round(loss, 4))
            chunk += 1
            print(f"{arm}: chunk {chunk}, loss {loss:.4f}", flush=True)
        arms[arm] = {"loss_per_chunk": losses, "validation": evaluate(model, data.val, plan.batch_size)}
        print(f"{arm}: {arms[arm]['validation']}", flush=True)
    a, b = arms["continued"]["validation"], arms["restarted"]["validation"]
    return {"machine": cpu_description(), "policy": policy, "from_images_seen": state.images_seen,
            "warm_chunks": args.warm, "chunks": args.chunks, "chunk_images": plan.chunk_images,
            "input_size": data.size, "rewarm_images": plan.rewarm_images, **arms,
            "restarted_minus_continued": {k: round(b[k] - a[k], 4) for k in a if k in b},
            "loss_difference_per_chunk": [round(y - x, 4) for x, y in zip(arms["continued"]["loss_per_chunk"],
                                                                         arms["restarted"]["loss_per_chunk"])],
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.campaign_restart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=cs.CAMPAIGN_DIR)
    p.add_argument("--data-dir", type=Path, action="append", help="default: the plan's folders")
    p.add_argument("--split-dir", type=Path, action="append")
    p.add_argument("--warm", type=int, default=2, help="chunks trained before the comparison starts")
    p.add_argument("--chunks", type=int, default=3, help="chunks each arm trains")
    p.add_argument("--precision", choices=("auto", "bfloat16", "float32"), default="auto")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    args.limit = None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        result = measure(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
