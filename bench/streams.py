"""Would OpenVINO's throughput mode run the exported models faster than the latency mode core uses?

    python -m bench.streams [--faces 64] [--rounds 5] [--models-dir models]

core compiles each exported part with ``PERFORMANCE_HINT=LATENCY`` (one stream, every core on each call:
:func:`core.runtime.openvino_network`). On a CPU where a one-stream network leaves cores idle between layers,
``THROUGHPUT`` with one stream per core, each stream running its share of the batch at the same time, could
do more faces per second. This times the age model's export (trunk then head, float32) both ways on the same
random inputs, alternated over ``--rounds`` rounds, checks that both give the same outputs, and prints
faces/s and their ratio. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from core.hardware import cpu_description, cpu_threads
    from core.models import MODEL_FILES, models_dir, read_metadata
    from core.runtime import EXPORT_PARTS, import_openvino, part_path, usable_export

    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=64, help="faces per call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args(argv)

    model = models_dir(args.models_dir) / MODEL_FILES["age"]
    record, why = usable_export(model)
    if record is None:
        raise SystemExit(f"error: {why}")
    size = int(read_metadata(model)["input_size"])
    threads = cpu_threads()
    x = np.random.default_rng(0).normal(0.0, 60.0, (args.faces, size, size, 3)).astype(np.float32)
    core = import_openvino().Core()

    def compile_parts(config: dict) -> list:
        return [core.compile_model(str(part_path(model, part)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})
                for part in EXPORT_PARTS]

    latency = [c.create_infer_request() for c in compile_parts({"PERFORMANCE_HINT": "LATENCY",
                                                                 "INFERENCE_NUM_THREADS": threads})]
    parts = compile_parts({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads,
                           "INFERENCE_NUM_THREADS": threads})
    streams = [[c.create_infer_request() for c in parts] for _ in range(threads)]
    shares = np.array_split(np.arange(args.faces), threads)

    def run_latency() -> np.ndarray:
        return latency[1].infer({0: latency[0].infer({0: x})[0]})[0].copy()

    def run_streams() -> np.ndarray:
        for (trunk, _), share in zip(streams, shares):
            trunk.start_async({0: x[share]})
        for trunk, head in streams:
            trunk.wait()
            head.start_async({0: trunk.get_output_tensor(0).data})
        for _, head in streams:
            head.wait()
        return np.concatenate([head.get_output_tensor(0).data.copy() for _, head in streams])

    runs = {"latency (core's)": run_latency, f"throughput, {threads} streams": run_streams}
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs compared
    diff = float(np.max(np.abs(outputs["latency (core's)"] - outputs[f"throughput, {threads} streams"])))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    rates = {name: args.faces / statistics.median(s) for name, s in seconds.items()}
    print(f"{cpu_description()}, {threads} threads; age model export, {args.faces} faces per call, float32, "
          f"median of {args.rounds} alternated rounds; largest output difference {diff:.2g}")
    for name, rate in rates.items():
        print(f"  {name:24s} {rate:7.1f} faces/s")
    names = list(rates)
    ratio = rates[names[1]] / rates[names[0]]
    print(f"  throughput / latency: {ratio:.3f}x")
    print(json.dumps({"faces": args.faces, "rounds": args.rounds, "threads": threads, "faces_per_s": rates,
                      "ratio": ratio, "max_abs_diff": diff}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
