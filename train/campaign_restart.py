"""What a stretch boundary costs the campaign: a warm restart against an uninterrupted run, measured.

    python -m train.campaign_restart --warm 2 --chunks 3 [--json docs/campaign_restart.json]

Between stretches the campaign keeps its weights as bfloat16 and AdamW's second moments as 8-bit logarithms,
and drops the first moments (:mod:`train.campaign_state`); the next stretch ramps the learning rate back up.
This measures that, from the committed state, without changing it: ``--warm`` chunks are trained first (so the
moments are those of a running campaign), then the same ``--chunks`` chunks once per arm, on the same data
order and augmentation: ``continued`` in the same process, ``restarted`` as a new stretch does (weights
rounded to bfloat16, second moments through their 8-bit code, first moments at zero, the re-warm ramp),
``no_moments`` (both moments at zero) and ``float32`` (exact weights and second moments). Reported: each
arm's training loss per chunk and its validation per dataset at the end; the differences are the costs.
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
    model = build_network(plan, weights, seen, seed=plan.seed + chunk,
                          velocities=cs.unpack_velocities(Path(args.folder) / "weights.npz"))
    started = time.perf_counter()
    for _ in range(args.warm):
        _, cursors = _train(model, data, chunk, cursors)
        seen, chunk = seen + plan.chunk_images, chunk + 1
    exact_weights, exact_v = cs.model_weights(model), cs.optimizer_velocities(model)
    stored = {k: cs.from_bfloat16(cs.to_bfloat16(v)) for k, v in exact_weights.items()}
    stored_v = {k: cs.from_log8(*cs.to_log8(v)) for k, v in exact_v.items()}
    starts = {"restarted": (stored, stored_v), "no_moments": (stored, None), "float32": (exact_weights, exact_v)}
    at = {"images_seen": seen, "chunk": chunk, "cursors": dict(cursors)}
    arms = {}
    for arm in args.arms:
        if arm != "continued":
            weights_at, velocities_at = starts[arm]
            model = build_network(plan, weights_at, at["images_seen"], seed=plan.seed + at["chunk"],
                                  velocities=velocities_at)
        chunk, cursors, losses = at["chunk"], dict(at["cursors"]), []
        for _ in range(args.chunks):
            loss, cursors = _train(model, data, chunk, cursors)
            losses.append(round(loss, 4))
            chunk += 1
            print(f"{arm}: chunk {chunk}, loss {loss:.4f}", flush=True)
        arms[arm] = {"loss_per_chunk": losses, "validation": evaluate(model, data.val, plan.batch_size)}
        print(f"{arm}: {arms[arm]['validation']}", flush=True)
    base = arms.get("continued")
    return {"machine": cpu_description(), "policy": policy, "from_images_seen": state.images_seen,
            "warm_chunks": args.warm, "chunks": args.chunks, "chunk_images": plan.chunk_images,
            "input_size": data.size, "rewarm_images": plan.rewarm_images, "arms": arms,
            "loss_minus_continued": {arm: [round(y - x, 4) for x, y in zip(base["loss_per_chunk"],
                                                                          r["loss_per_chunk"])]
                                     for arm, r in arms.items() if base and arm != "continued"},
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.campaign_restart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=cs.CAMPAIGN_DIR)
    p.add_argument("--data-dir", type=Path, action="append", help="default: the plan's folders")
    p.add_argument("--split-dir", type=Path, action="append")
    p.add_argument("--warm", type=int, default=2, help="chunks trained before the comparison starts")
    p.add_argument("--chunks", type=int, default=3, help="chunks each arm trains")
    p.add_argument("--arms", type=lambda t: t.split(","), default=["continued", "restarted", "no_moments"],
                   help="continued (no restart), restarted (as a stretch restarts: bfloat16 weights, 8-bit "
                        "second moments), no_moments (bfloat16 weights, fresh moments), float32 (exact weights "
                        "and moments, fresh first moments only)")
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
