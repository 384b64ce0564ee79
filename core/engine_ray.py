"""The Ray engine of ``python -m core batch --engine ray``: the local engine's rows, computed on a Ray cluster.

Ray Data's batch-inference layout: one map stage reads, decodes and detects (:func:`detect_batch`, Ray tasks
of one CPU) and sends each face's crops on; both models run in an actor pool (:class:`Predictor`, the models
loaded once per actor); the rows are written as Parquet by the workers, or collected here, in input order,
into one CSV / JSON Lines file for small runs. Failed tasks are retried and dead actors restarted
(:data:`RETRIES`): a retried batch replaces the lost one, so no row is lost or written twice. Every node needs
this project (with its models) at the same path as here; see docs/batch.md.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.exceptions import ExecutionTimeoutError

from core.batch import (
    FIELD_TYPES,
    BatchError,
    RowWriter,
    Settings,
    Source,
    Summary,
    read_source,
    row_schema,
)
from core.detect import Detection
from core.errors import AgeGenderError
from core.image import load_image
from core.modelfiles import model_paths, models_dir, read_metadata
from core.models import load_models, settle_precision
from core.pipeline import face_crop, face_result, find_faces
from core.results import face_row

#: Times a failed read task is retried and a dead actor restarted (with its batch) before the job fails.
RETRIES = 4
#: Images per read-and-detect task: small enough to spread a few hundred images over a cluster, large
#: enough that a task's overhead (a few ms) stays small against its detections (tens of ms each).
IMAGES_PER_TASK = 16
#: Columns that only order and trace the rows (``index``: the image's place in the input list).
INTERNAL = {"index": pa.int64(), "read_node": pa.string(), "model_node": pa.string()}
#: The environment variables that choose how core runs, passed on to every worker.
PASSED_ENV = ("TF_CPP_MIN_LOG_LEVEL", "ONEDNN_MAX_CPU_ISA")

_DETECTED = pa.schema([("index", pa.int64()), ("file", pa.string()), ("status", pa.string()),
                       ("face", pa.int64()), ("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()),
                       ("h", pa.float64()), ("confidence", pa.float64()), ("error", pa.string()),
                       ("crops", pa.binary()), ("read_node", pa.string()), ("cut_by_frame", pa.bool_())])


def start(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray: a new local instance without ``address`` (``num_cpus``: its CPUs, default all), the
    cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``) otherwise. Workers get this
    project on their path and core's environment settings. False where Ray was already connected."""
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k.startswith("AGEGENDER_") or k in PASSED_ENV}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    local = {} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    if address and address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address or "local", runtime_env={"env_vars": env}, logging_level=logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatchError(f"could not connect to Ray at {address}: {str(exc).splitlines()[0]}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail at once where nothing listens at ``address`` (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise BatchError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT.")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise BatchError(f"nothing answers at {address} ({exc.strerror or exc}): is the cluster's head node up "
                         "(`ray start --head`)?") from None


def plan(concurrency: int | None) -> tuple[int, float]:
    """Actors in the pool and CPUs per actor. By default one actor per two CPUs of the cluster (at least one);
    each takes one CPU, fewer where that would leave none for the read stage (on 2 CPUs, two actors of one
    CPU each left the read tasks none, and the job waited for ever)."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    actors = concurrency or max(1, int(cpus // 2))
    return actors, min(1.0, max(cpus - 1.0, 0.0) / actors)


def input_sizes(settings: Settings) -> list[int]:
    """The crop sizes the two models take (from their metadata): the read stage crops each face once per size."""
    paths = model_paths(models_dir(settings.models_dir))
    return sorted({int(read_metadata(p)["input_size"]) for p in paths.values()})


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


def detect_batch(batch: dict[str, np.ndarray], *, settings: Settings, sizes: list[int]) -> pa.Table:
    """The read stage: read, decode and detect each image of ``batch``; a row per face with its crops (uint8,
    one per size in ``sizes``, end to end), or the image's ``no_face`` / ``error`` row."""
    rows: list[dict[str, Any]] = []
    node = _node()
    for index, name, location, member in zip(batch["index"], batch["file"], batch["location"], batch["member"],
                                             strict=True):
        base = {"index": int(index), "file": str(name), "read_node": node}
        try:
            rgb = load_image(read_source(Source(str(name), str(location), str(member))), name=str(name))
            faces = find_faces(rgb, detect=settings.detect, min_face_size=settings.min_face_size,
                               threshold=settings.threshold)
        except AgeGenderError as exc:
            rows.append({**base, "status": "error", "error": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - a bad file never fails the job: its row says what happened
            rows.append({**base, "status": "error", "error": f"{name} could not be analysed "
                                                             f"({type(exc).__name__}: {exc})."})
            continue
        if not faces:
            rows.append({**base, "status": "no_face"})
        for i, face in enumerate(faces, 1):
            crops = b"".join(np.ascontiguousarray(face_crop(rgb, face, s, align=settings.align), np.uint8).tobytes()
                             for s in sizes)
            x, y, w, h = (float(v) for v in face.box)
            rows.append({**base, "status": "ok", "face": i, "x": x, "y": y, "w": w, "h": h,
                         "confidence": float(face.confidence), "crops": crops,
                         "cut_by_frame": bool(face.cut_by_frame)})
    return pa.Table.from_pylist(rows, schema=_DETECTED)


class Predictor:
    """An actor of the model stage: both models loaded once, then each batch's faces in one model call."""

    def __init__(self, settings: Settings, sizes: list[int], internal: bool) -> None:
        settle_precision(settings.models_dir)
        self.models = load_models(settings.models_dir, tta=settings.tta)
        self.sizes, self.internal = sizes, internal
        self.schema = row_schema()
        if internal:
            self.schema = pa.schema(list(self.schema) + [pa.field(k, t) for k, t in INTERNAL.items()])

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = batch.to_pydict()
        ok = [k for k, status in enumerate(cols["status"]) if status == "ok"]
        predicted: dict[int, tuple[float, float]] = {}
        if ok:
            crops, offset = {}, 0
            for s in self.sizes:
                n = s * s * 3
                crops[s] = np.stack([np.frombuffer(cols["crops"][k], np.uint8, n, offset).reshape(s, s, 3)
                                     for k in ok])
                offset += n
            pred = self.models.predict(crops)
            predicted = {k: (pred.ages[j], pred.female_probabilities[j]) for j, k in enumerate(ok)}
        node = _node()
        rows = []
        for k in range(batch.num_rows):
            if k in predicted:
                face = Detection(box=(cols["x"][k], cols["y"][k], cols["w"][k], cols["h"][k]),
                                 confidence=cols["confidence"][k], cut_by_frame=bool(cols["cut_by_frame"][k]))
                row = face_row(cols["file"][k], cols["face"][k], face_result(face, *predicted[k], self.models))
            else:
                row = {"file": cols["file"][k], "status": cols["status"][k], "error": cols["error"][k]}
            if self.internal:
                row.update(index=cols["index"][k], read_node=cols["read_node"][k], model_node=node)
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=self.schema)


def rows_dataset(sources: list[Source], settings: Settings, *, concurrency: int | None = None,
                 batch_size: int = 8, images_per_task: int = IMAGES_PER_TASK, internal: bool = True,
                 predictor: type[Predictor] = Predictor) -> ray.data.Dataset:
    """The rows of ``sources`` as a (lazy) Ray dataset: :data:`FIELD_TYPES`' columns, plus :data:`INTERNAL`'s
    where ``internal``. ``batch_size``: faces per model call; ``predictor``: the actor class (tests subclass it)."""
    settings = replace(settings, models_dir=str(models_dir(settings.models_dir).resolve()))  # the same on every node
    sizes = input_sizes(settings)
    actors, actor_cpus = plan(concurrency)
    items = [{"index": i, "file": s.name, "location": s.location, "member": s.member}
             for i, s in enumerate(sources)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / images_per_task)))
    with warnings.catch_warnings():
        # Ray 2.60 takes retries only as ``ray_remote_args``, which it calls deprecated (named in later versions).
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(detect_batch, fn_kwargs={"settings": settings, "sizes": sizes},
                            batch_size=images_per_task, num_cpus=1, max_retries=RETRIES)
        return ds.map_batches(predictor, batch_size=max(1, batch_size), batch_format="pyarrow",
                              fn_constructor_kwargs={"settings": settings, "sizes": sizes, "internal": internal},
                              compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
                              max_restarts=RETRIES, max_task_retries=RETRIES)


def collect(ds: ray.data.Dataset) -> pa.Table:
    """Every row of ``ds`` here, in input order (image, then face)."""
    tables = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    if not tables:
        return pa.Table.from_pylist([], schema=row_schema())
    table = pa.concat_tables(tables)
    return table.sort_by([("index", "ascending"), ("face", "ascending")])


def parquet_summary(output: str) -> Summary:
    """The counts of a Parquet output folder (its status and face columns only)."""
    import pyarrow.dataset as pads

    table = pads.dataset(output, format="parquet", schema=row_schema()).to_table(columns=["status", "face"])
    summary = Summary()
    summary.add(table.to_pylist())
    return summary


def run(sources: list[Source], settings: Settings, output: str, fmt: str, *, address: str | None = None,
        concurrency: int | None = None, batch_size: int = 8) -> Summary:
    """Analyse ``sources`` on Ray (a local instance without ``address``) and write the rows to ``output``."""
    began = time.perf_counter()
    started = start(address)
    try:
        actors, actor_cpus = plan(concurrency)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        print(f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs on {nodes} node{'s' * (nodes != 1)}, "
              f"{actors} model actor{'s' * (actors != 1)} of {actor_cpus:g} CPU "
              f"(connected in {time.perf_counter() - began:.1f} s)", file=sys.stderr)
        t0 = time.perf_counter()
        ds = rows_dataset(sources, settings, concurrency=actors, batch_size=batch_size, internal=fmt != "parquet")
        if fmt == "parquet":
            ds.write_parquet(output)
            summary = parquet_summary(output)
        else:
            table = collect(ds).select(list(FIELD_TYPES))
            summary = Summary()
            writer = RowWriter(output, fmt)
            for chunk in table.to_batches(max_chunksize=10_000):
                rows = chunk.to_pylist()
                writer.write(rows)
                summary.add(rows)
            writer.close()
        summary.seconds = time.perf_counter() - t0
        return summary
    except (ray.exceptions.RayError, ExecutionTimeoutError) as exc:
        # A job-wide failure (per-file failures are rows): say which, briefly; the details are in Ray's logs.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise BatchError(f"the Ray job failed ({type(exc).__name__}: {lines[-1] if lines else 'no message'}); "
                         "Ray's logs are under /tmp/ray/session_latest/logs on each node.") from None
    finally:
        if started:
            ray.shutdown()
