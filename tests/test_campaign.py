"""The backbone campaign: its committed state, data order, learning rate, resume, and faces without an age."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from train import campaign_state as cs
from train.campaign import SaveWithinChunk
from train.campaign import main as campaign_main


def make_lfw_folder(folder, chip: np.ndarray, people: int = 20, photos: int = 2, seed: int = 3) -> None:
    """An LFW-like folder: a labels.csv with a person column and an empty age (gender only)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,age,gender,person"]
    for p in range(people):
        for k in range(photos):
            name = f"Person_{p}_{k:04d}.jpg"
            img = np.clip(chip * rng.uniform(0.7, 1.1) + rng.normal(0, 6, chip.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img[:, ::-1] if p % 2 else img).save(folder / name, quality=90)
            rows.append(f"{name},,{p % 2},Person_{p}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def lfw_dir(tmp_path_factory, astronaut_chip):
    folder = tmp_path_factory.mktemp("data") / "lfw"
    make_lfw_folder(folder, astronaut_chip)
    return folder


def test_bfloat16_weights_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    big, small = rng.normal(0, 0.05, (64, 128)).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)
    back = cs.unpack_weights(_write(tmp_path, cs.pack_weights({"conv/0": big, "bn/3": small})))
    assert back["conv/0"].dtype == np.float32 and np.array_equal(back["bn/3"], small)  # small ones exact
    assert np.max(np.abs(back["conv/0"] - big) / np.abs(big)) <= 2.0**-8  # bf16: 8 bits of mantissa
    exact = cs.from_bfloat16(cs.to_bfloat16(np.array([1.0, -2.5, 0.0, 2.0**100], np.float32)))
    assert exact.tolist() == [1.0, -2.5, 0.0, 2.0**100]  # values bf16 holds come back exactly


def test_second_moments_round_trip_as_8_bit_logarithms(tmp_path):
    rng = np.random.default_rng(1)
    v = np.exp2(rng.uniform(-40, -4, (300, 7))).astype(np.float32)
    v[0, :3] = 0.0
    path = _write(tmp_path, cs.pack_weights({"conv/0": np.ones(3, np.float32)}, {"conv1_1/kernel": v}))
    back = cs.unpack_velocities(path)["conv1_1/kernel"]
    assert back.dtype == np.float32 and back.shape == v.shape and (back[0, :3] == 0).all()
    octaves = np.log2(v[v > 0]).max() - np.log2(v[v > 0]).min()
    ratio = back[v > 0] / v[v > 0]
    assert np.abs(np.log2(ratio)).max() <= octaves / 254 / 2 + 1e-4  # half a code step, on a log2 scale
    assert set(cs.unpack_weights(path)) == {"conv/0"}  # the moments are not weights


def _write(tmp_path, data: bytes):
    path = tmp_path / "w.npz"
    path.write_bytes(data)
    return path


def test_a_state_refuses_weights_it_does_not_name(tmp_path):
    state = cs.save_checkpoint(tmp_path, {"conv/0": np.ones((80, 80), np.float32)}, cs.State(images_seen=64))
    assert cs.load_checkpoint(tmp_path)[0].images_seen == 64
    (tmp_path / "weights.npz").write_bytes(cs.pack_weights({"conv/0": np.zeros((80, 80), np.float32)}))
    with pytest.raises(ValueError, match="not the file state.json names"):
        cs.load_checkpoint(tmp_path)
    assert state.weights_sha256


def test_the_data_order_of_a_chunk_depends_only_on_the_plan_and_the_cursors():
    plan = cs.Plan(datasets={"a": 0.7, "b": 0.3}, chunk_images=50)
    bins = {"a": np.array([0, 0, 1, 1, 1, 2, 3]), "b": np.full(5, -1)}
    shares = cs.pool_shares(plan.datasets, bins, 0.5)
    assert set(shares) == {"a/0", "a/1", "a/2", "a/3", "b/all"} and sum(shares.values()) == pytest.approx(1)
    assert shares["b/all"] == pytest.approx(0.3)
    members = cs.pool_members(bins, list(shares))
    cursors: dict[str, int] = {}
    orders = []
    for chunk in range(4):
        order, cursors = cs.chunk_order(plan, chunk, shares, members, cursors)
        orders.append(order)
    # a campaign continued from chunk 2's cursors draws exactly what the uninterrupted one drew
    _, after_two = cs.chunk_order(plan, 1, shares, members, cs.chunk_order(plan, 0, shares, members, {})[1])
    assert cs.chunk_order(plan, 2, shares, members, after_two)[0] == orders[2]
    # each pool walks through its members in cycles: every member once before any twice
    drawn = [i for order in orders for d, i in order if d == "b"]
    for start in range(0, len(drawn) - 4, 5):
        assert sorted(drawn[start:start + 5]) == [0, 1, 2, 3, 4]
    assert sum(cursors.values()) == 4 * plan.chunk_images


def test_learning_rate_warms_up_holds_decays_and_rewarms_after_a_restart():
    from train.campaign import CampaignLR

    plan = cs.Plan(datasets={"a": 1.0}, stages=[[64, 6400]], batch_size=64, warmup_images=640,
                   decay_images=1280, rewarm_images=320)
    schedule = CampaignLR(plan)
    for step in (0, 5, 10, 50, 80, 90, 100):
        assert float(schedule(step)) == pytest.approx(plan.lr_at(step * 64), rel=1e-5)
    assert plan.lr_at(320) == pytest.approx(plan.lr / 2) and plan.lr_at(3200) == plan.lr
    assert plan.lr_at(6400) == pytest.approx(plan.lr * plan.final_lr_fraction)
    restarted = CampaignLR(plan, restart_step=40)  # fresh moments: a ramp over rewarm_images (5 steps)
    assert [round(float(restarted(s)) / plan.lr, 3) for s in (40, 42, 44, 45, 60)] == [0.2, 0.6, 1.0, 1.0, 1.0]


class Killed(Exception):
    """Stands for the machine going away in the middle of a stretch."""


def test_a_stretch_stopped_and_continued_sees_what_one_stretch_would(tmp_path, utk_dir, lfw_dir, monkeypatch):
    """Two stretches (stopped at one chunk) reach the same position, cursors and log shape as one; faces of
    the gender-only dataset count in the gender numbers only; the task models start from the campaign."""
    common = ["--stages", "32:48", "--chunk-images", "16", "--batch-size", "8", "--precision", "float32",
              "--no-cache", "--augment", "photo"]
    data = ["--data-dir", str(utk_dir), "--data-dir", str(lfw_dir), "--split-dir", str(tmp_path / "s_utk"),
            "--split-dir", str(tmp_path / "s_lfw")]
    one, two = tmp_path / "one", tmp_path / "two"
    assert campaign_main([*data, *common, "--folder", str(one), "--run-dir", str(tmp_path / "r1")]) == 0
    assert campaign_main([*data, *common, "--folder", str(two), "--run-dir", str(tmp_path / "r2"),
                          "--until-images", "16"]) == 0
    assert cs.read_state(two).images_seen == 16
    # continued with the folders recorded in the plan
    assert campaign_main(["--folder", str(two), "--run-dir", str(tmp_path / "r2"), "--precision", "float32",
                          "--no-cache"]) == 0
    a, b = cs.read_state(one), cs.read_state(two)
    assert (a.images_seen, a.chunks_done, a.cursors) == (b.images_seen, b.chunks_done, b.cursors) == (
        48, 3, a.cursors)
    # killed within a chunk, right after a save there: the next stretch goes on from that batch
    three = tmp_path / "three"
    with monkeypatch.context() as m:
        original = SaveWithinChunk.on_train_batch_end

        def save_then_die(self, batch, logs=None):
            original(self, batch, logs)
            if self.state.batches_done:
                raise Killed

        m.setattr(SaveWithinChunk, "on_train_batch_end", save_then_die)
        with pytest.raises(Killed):
            campaign_main([*data, *common, "--folder", str(three), "--run-dir", str(tmp_path / "r3"),
                           "--save-every", "0"])
    killed = cs.read_state(three)
    assert (killed.images_seen, killed.chunks_done, killed.batches_done, killed.cursors) == (8, 0, 1, {})
    assert campaign_main(["--folder", str(three), "--run-dir", str(tmp_path / "r3"), "--precision", "float32",
                          "--no-cache"]) == 0
    c = cs.read_state(three)
    assert (c.images_seen, c.chunks_done, c.batches_done, c.cursors) == (48, 3, 0, a.cursors)
    assert (a.stretches, b.stretches) == (1, 2)
    log = list(csv.DictReader((two / "log.csv").open()))
    assert [r["stretch"] for r in log] == ["1", "2"] and log[-1]["images_at_end"] == "48"
    assert log[0]["policy"] == "float32" and float(log[-1]["images_per_s"]) > 0
    history = list(csv.DictReader((one / "history.csv").open()))
    assert history[-1]["images_seen"] == "48" and "val_gender_acc_lfw" in history[-1]
    assert "val_age_mae_lfw" not in history[-1] and "val_age_mae_utkface" in history[-1]
    assert json.loads((tmp_path / "r1" / "progress.json").read_text())["state"] == "finished"
    # a complete campaign trains nothing more
    assert campaign_main(["--folder", str(one), "--run-dir", str(tmp_path / "r1"), "--no-cache"]) == 0
    assert cs.read_state(one).stretches == 1
    # a task model takes the campaign's backbone by layer name
    from train.model import build_model

    velocities = cs.unpack_velocities(one / "weights.npz")
    assert "conv5_3/kernel" in velocities and "age_dense/kernel" in velocities
    from train.campaign import build_network

    restarted = build_network(cs.read_plan(one), cs.load_checkpoint(one)[1], 48, seed=0, velocities=velocities)
    assert np.array_equal(cs.optimizer_velocities(restarted)["conv5_3/kernel"], velocities["conv5_3/kernel"])
    assert int(restarted.optimizer.iterations.numpy()) == 48 // 8
    model = build_model("age", input_size=32)
    _, weights = cs.load_checkpoint(one)
    names = cs.set_model_weights(model, weights, strict=False)
    assert "conv5_3" in names and "age_dense" in names
    assert np.allclose(model.get_layer("conv1_1").get_weights()[0], weights["conv1_1/0"])


def test_faces_without_an_age_never_reach_the_age_loss():
    import keras

    from train.data import with_masks
    from train.model import build_model, compile_args

    keras.utils.set_random_seed(0)
    model = build_model("multitask", input_size=32)
    model.compile(optimizer="sgd", **compile_args("multitask"))
    x = np.random.default_rng(0).normal(0, 40, (4, 32, 32, 3)).astype(np.float32)
    y, w = with_masks({"age": np.array([30, -1, 12, -1], np.float32), "gender": np.array([0, 1, 1, 0], np.float32),
                       "race": np.array([1, -1, 2, -1], np.int32)})
    assert w["age"].tolist() == [1, 0, 1, 0] and w["race"].tolist() == [1, 0, 1, 0] and w["gender"].all()
    assert y["age"].min() >= 0 and y["race"].min() >= 0  # no -1 reaches a loss function
    other = {**y, "age": np.array([30, 500, 12, 90], np.float32)}  # what stands in for the unknown ages
    a = model.test_on_batch(x, y, sample_weight=w, return_dict=True)
    b = model.test_on_batch(x, other, sample_weight=w, return_dict=True)
    assert a["age_loss"] == pytest.approx(b["age_loss"], rel=1e-6) and a["age_mae"] == pytest.approx(b["age_mae"])
    c = model.test_on_batch(x, other, sample_weight={**w, "age": np.ones(4, np.float32)}, return_dict=True)
    assert c["age_loss"] > a["age_loss"]  # the same rows with weight 1 do reach it


def test_gender_only_faces_train_the_gender_model_and_are_left_out_of_the_age_model(tmp_path, utk_dir, lfw_dir):
    from train.data import for_task, load_or_make_split

    split = load_or_make_split(lfw_dir, tmp_path / "s")
    everyone = [s for part in split.values() for s in part]
    assert {s.age for s in everyone} == {-1} and for_task(everyone, "age") == []
    assert for_task(everyone, "gender") == everyone
    from train.trainer import main as train_main

    base = ["--data-dir", str(utk_dir), "--data-dir", str(lfw_dir), "--split-dir", str(tmp_path / "su"),
            "--split-dir", str(tmp_path / "s"), "--schedule", "32:1", "--batch-size", "8", "--precision",
            "float32", "--no-cache", "--crop", "chip", "--out-dir", str(tmp_path / "models")]
    assert train_main(["age", *base, "--run-dir", str(tmp_path / "ra")]) == 0
    config = json.loads((tmp_path / "ra" / "config.json").read_text())
    assert set(config["datasets"]) == {"utkface"}
    assert train_main(["gender", *base, "--run-dir", str(tmp_path / "rg")]) == 0
    assert set(json.loads((tmp_path / "rg" / "config.json").read_text())["datasets"]) == {"utkface", "lfw"}
    import keras

    before = keras.mixed_precision.global_policy().name
    # no --precision: auto, bf16 on some CPUs; a failed run leaves the caller's policy as it was
    assert train_main(["age", "--data-dir", str(lfw_dir), "--split-dir", str(tmp_path / "s"),
                       "--run-dir", str(tmp_path / "rx"), "--no-cache"]) == 2
    assert keras.mixed_precision.global_policy().name == before


def test_a_person_stays_on_one_side_of_the_split_and_the_split_is_stable(tmp_path, astronaut_chip):
    from train.data import load_or_make_split

    folder = tmp_path / "people"
    make_lfw_folder(folder, astronaut_chip, people=20, photos=3, seed=9)
    first = load_or_make_split(folder, tmp_path / "s1", log=lambda *_: None)
    side = {}
    for part, samples in first.items():
        for s in samples:
            assert side.setdefault(s.person, part) == part, f"{s.person} is in {side[s.person]} and {part}"
    again = load_or_make_split(folder, tmp_path / "s2", log=lambda *_: None)
    assert {k: [s.name for s in v] for k, v in first.items()} == {k: [s.name for s in v] for k, v in again.items()}
    assert all(first[k] for k in ("train", "val", "test"))


def test_compression_numbers_equal_a_hand_computation():
    """Slope of predicted on true age and signed error per bucket; a face without an age (-1) counts in the
    gender numbers only."""
    from train.evaluate import compute_metrics

    m = compute_metrics([10, 20, 30, 40, -1], [15, 22, 29, 34, 50], [0, 1, 1, 0, 1], [0.2, 0.8, 0.3, 0.1, 0.9])
    # centred true -15, -5, 5, 15; centred predicted -10, -3, 4, 9: 320 / 500
    assert m["age_slope"] == pytest.approx(0.64)
    buckets = {k: v["age_bias"] for k, v in m["per_age_bucket"].items() if v["age_bias"] is not None}
    assert buckets == {"10-14": 5.0, "20-29": 2.0, "30-39": -1.0, "40-49": -6.0}
    assert m["age_mae"] == pytest.approx(3.5) and m["age_bias"] == pytest.approx(0.0)
    assert m["gender_accuracy"] == pytest.approx(0.8) and m["n"] == 5
    lfw = compute_metrics([-1, -1], [30, 40], [1, 0], [0.9, 0.7])
    assert lfw["age_mae"] is None and lfw["age_slope"] is None and lfw["gender_accuracy"] == 0.5


def test_a_limited_smoke_run_never_replaces_the_shipped_models(tmp_path, utk_dir, monkeypatch):
    """--limit without --out-dir exports into the run folder; models/ is left as it is."""
    from core.modelfiles import DEFAULT_MODELS_DIR
    from train.trainer import main as train_main

    before = {p.name: p.stat().st_mtime_ns for p in DEFAULT_MODELS_DIR.glob("*") if p.is_file()}
    run = tmp_path / "smoke"
    assert train_main(["gender", "--data-dir", str(utk_dir), "--split-dir", str(tmp_path / "s"), "--limit", "16",
                       "--schedule", "32:1", "--batch-size", "8", "--precision", "float32", "--no-cache",
                       "--crop", "chip", "--run-dir", str(run)]) == 0
    assert (run / "models" / "gender_model.h5").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in DEFAULT_MODELS_DIR.glob("*") if p.is_file()} == before
