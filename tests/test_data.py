"""Datasets beside UTKFace: AAF names, a labels.csv folder, per-dataset splits, the landmarks file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train.data as data
import train.landmark_store as lms
import train.landmarks as lm
from conftest import make_utk_folder
from train.data import (
    Sample,
    dataset_name,
    duplicate_groups,
    load_or_make_split,
    make_split,
    parse_aaf_name,
    scan,
    sources,
)

QUIET = {"log": lambda *_: None}


def make_aaf_folder(folder: Path, n: int = 40, seed: int = 0) -> list[str]:
    """``n`` small random JPEGs with All-Age-Faces names, ages 2-80, both genders."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{int(rng.integers(2, 81))}_{i % 2}_aaf_{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def test_aaf_names_parse_and_malformed_ones_are_skipped_and_counted(tmp_path):
    s = parse_aaf_name("27_1_aaf_01234.jpg")
    assert s == Sample("27_1_aaf_01234.jpg", 27, 1, -1, "aaf")
    for bad in ["27_2_aaf_01234.jpg", "27_1_aaf_.jpg", "0_1_aaf_01234.jpg", "27_aaf_01234.jpg", "27_1_aaf_01234.png",
                "27_1_af_01234.jpg", "x_1_aaf_01234.jpg", "27_1_aaf_01234 .jpg", "200_0_aaf_00001.jpg"]:
        assert parse_aaf_name(bad) is None, bad
    names = make_aaf_folder(tmp_path, n=6)
    for bad in ("27_2_aaf_01234.jpg", "31_0_aaf01235.jpg"):
        shutil.copy(tmp_path / names[0], tmp_path / bad)
    (tmp_path / "notes.txt").write_text("not an image")
    samples, malformed = scan(tmp_path)
    assert dataset_name(tmp_path) == "aaf"
    assert len(samples) == 6 and sorted(malformed) == ["27_2_aaf_01234.jpg", "31_0_aaf01235.jpg"]
    assert all(s.dataset == "aaf" and s.race == -1 for s in samples)


def test_sample_keeps_positional_construction():
    s = Sample("a.jpg", 30, 1, 2)
    assert (s.name, s.age, s.gender, s.race, s.dataset) == ("a.jpg", 30, 1, 2, "utkface")


def test_dataset_kind_comes_from_names_or_labels_csv(tmp_path, astronaut_chip):
    make_utk_folder(tmp_path / "utk", astronaut_chip, n=3)
    make_aaf_folder(tmp_path / "aaf_copy", n=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "labels.csv").write_text("file,age,gender\n")
    assert [dataset_name(tmp_path / d) for d in ("utk", "aaf_copy", "mine")] == ["utkface", "aaf", "mine"]
    (tmp_path / "aaf").mkdir()
    (tmp_path / "aaf" / "labels.csv").write_text("file,age,gender\n")
    with pytest.raises(ValueError, match="built-in"):
        dataset_name(tmp_path / "aaf")
    with pytest.raises(ValueError, match="both dataset 'utkface'"):
        sources([tmp_path / "utk", tmp_path / "utk"])
    with pytest.raises(ValueError, match="--split-dir"):
        sources([tmp_path / "utk", tmp_path / "mine"], [tmp_path / "s"])
    got = sources([tmp_path / "utk", tmp_path / "mine"])
    assert list(got) == ["utkface", "mine"] and got["mine"].split_dir == data.SPLITS_ROOT / "mine"


def test_aaf_split_keeps_copies_together_and_is_stable(tmp_path, monkeypatch):
    folder = tmp_path / "aaf"
    names = make_aaf_folder(folder, n=80, seed=2)
    copies = {}
    for i, name in enumerate(names[:12]):  # byte-identical copies under other names (other labels, too)
        copy = f"{60 + i}_{(i + 1) % 2}_aaf_{90000 + i}.jpg"
        shutil.copy(folder / name, folder / copy)
        copies[name] = copy
    samples, _ = scan(folder)
    split = make_split(samples, duplicate_groups(folder, [s.name for s in samples]), seed=5)
    side = {n: k for k, v in split.items() for n in v}
    assert len(side) == len(samples) and all(split.values())
    assert all(side[a] == side[b] for a, b in copies.items())
    # the default split folder is train/splits/<dataset>; the same seed gives the same lists, run after run
    monkeypatch.setattr(data, "SPLITS_ROOT", tmp_path / "splits")
    first = load_or_make_split(folder, **QUIET)
    listed = (tmp_path / "splits" / "aaf" / "train.txt").read_text()
    shutil.rmtree(tmp_path / "splits")
    again = load_or_make_split(folder, **QUIET)
    assert first == again and (tmp_path / "splits" / "aaf" / "train.txt").read_text() == listed
    assert {k: [s.name for s in v] for k, v in first.items()} == make_split(
        samples, duplicate_groups(folder, [s.name for s in samples]))
    assert all(s.dataset == "aaf" for v in first.values() for s in v)


def test_labels_csv_folder_loads_and_bad_rows_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "my_faces"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "sub/c.jpg", "d e.jpg", "f.jpg", "g.jpg", "h.jpg"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    (folder / "labels.csv").write_text(
        "File, Age ,gender,race\n"
        "a.jpg,34,1,2\n"
        "b.png,7,M,\n"
        "sub/c.jpg,61,female,-1\n"
        "d e.jpg,0,0,4\n"
        "missing.jpg,30,0,0\n"      # no such file
        "f.jpg,thirty,0,0\n"        # age not a number
        "f.jpg,30,x,0\n"            # bad gender
        "f.jpg,30,1,7\n"            # bad race
        "a.jpg,35,1,2\n"            # listed twice
        "../a.jpg,30,1,0\n"         # outside the folder
        "f.jpg,30.5,1,0\n"          # age not whole
        "g.jpg,,1,0\n"              # no age: gender only (LFW)
        "h.jpg,,,0\n")              # neither age nor gender
    samples, malformed = scan(folder)
    assert dataset_name(folder) == "my_faces"
    assert samples == [Sample("a.jpg", 34, 1, 2, "my_faces"), Sample("b.png", 7, 0, -1, "my_faces"),
                       Sample("d e.jpg", 0, 0, 4, "my_faces"), Sample("g.jpg", -1, 1, 0, "my_faces"),
                       Sample("sub/c.jpg", 61, 1, -1, "my_faces")]
    assert len(malformed) == 8 and "neither age nor gender" in malformed[-1]
    assert all(m.startswith("labels.csv line ") for m in malformed)
    assert "line 6:" in malformed[0] and "listed twice" in malformed[4]
    split = load_or_make_split(folder, tmp_path / "split", **QUIET)
    assert sorted(s.name for v in split.values() for s in v) == sorted(s.name for s in samples)
    (folder / "labels.csv").write_text("name,age\na.jpg,3\n")
    with pytest.raises(ValueError, match="missing column"):
        scan(folder)


@pytest.fixture
def no_detection(monkeypatch):
    """MTCNN must not run: every call fails the test."""
    def fail(path):
        raise AssertionError(f"landmarks recomputed for {path}")
    monkeypatch.setattr(lms, "detect_landmarks", fail)


def fake_marks(i: int) -> np.ndarray:
    return (np.array([[0.3, 0.3], [0.7, 0.3], [0.5, 0.5], [0.32, 0.7], [0.68, 0.7]]) * 40 + i).astype(np.float32)


def test_landmarks_file_round_trips_and_replaces_detection(tmp_path, monkeypatch, no_detection):
    from core.crop import crop_face
    from core.detect import DETECTOR_VERSION
    from core.image import load_image

    folder = tmp_path / "aaf"
    make_aaf_folder(folder, n=5)
    samples, _ = scan(folder)
    table = {s.name: ((folder / s.name).stat().st_size, fake_marks(i)) for i, s in enumerate(samples)}
    table[samples[4].name] = (table[samples[4].name][0], np.full((5, 2), np.nan, np.float32))  # no face
    store = tmp_path / "split" / "landmarks.npz"
    header = lms.write_landmarks(store, table, dataset="aaf")
    back, header_back = lms.read_landmarks(store)
    assert header_back == header and header["detector"] == DETECTOR_VERSION and header["n_face"] == 4
    assert set(back) == set(table) and all(np.array_equal(back[n][1], table[n][1], equal_nan=True) for n in table)
    with np.load(store) as f:
        assert f["landmarks"].dtype == np.float32 and f["landmarks"].shape == (5, 5, 2)

    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    marks = data.chip_landmarks(folder, samples[::-1], store=store)  # any order, any subset: keyed by name
    np.testing.assert_array_equal(marks, np.stack([table[s.name][1] for s in samples[::-1]]))
    crops = data.load_chips(folder, samples, 32, align=True, store=store)
    for i in range(4):
        np.testing.assert_array_equal(crops[i], crop_face(load_image(folder / samples[i].name), fake_marks(i), 32))
    np.testing.assert_array_equal(crops[4], crop_face(load_image(folder / samples[4].name), None, 32))
    # the default store is train/splits/<dataset>/landmarks.npz
    monkeypatch.setattr(data, "SPLITS_ROOT", tmp_path / "splits")
    (tmp_path / "splits" / "aaf").mkdir(parents=True)
    shutil.copy(store, tmp_path / "splits" / "aaf" / "landmarks.npz")
    np.testing.assert_array_equal(data.chip_landmarks(folder, samples[:2], cache=False), marks[::-1][:2])


def test_cached_chips_are_read_again_when_a_file_changes_under_its_name(tmp_path, monkeypatch):
    """The chip cache is keyed by each file's size and time too: a folder at the same path whose images were
    replaced (a dataset exported again; a test folder of an earlier run) gives the new pixels."""
    import os

    from core.crop import crop_face
    from core.image import load_image

    folder = tmp_path / "aaf"
    make_aaf_folder(folder, n=3)
    samples, _ = scan(folder)
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    first = data.load_chips(folder, samples, 32)
    np.testing.assert_array_equal(data.load_chips(folder, samples, 32), first)  # from the cache
    assert len(list((tmp_path / "cache").glob("chips_*.npy"))) == 1
    changed = folder / samples[1].name
    stat = changed.stat()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(changed, "JPEG")
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = data.load_chips(folder, samples, 32)
    np.testing.assert_array_equal(again[[0, 2]], first[[0, 2]])
    np.testing.assert_array_equal(again[1], crop_face(load_image(changed), None, 32))
    assert not np.array_equal(again[1], first[1])


def test_only_missing_stale_or_changed_landmarks_are_computed(tmp_path, monkeypatch):
    folder = tmp_path / "aaf"
    make_aaf_folder(folder, n=4)
    samples, _ = scan(folder)
    computed = []

    def detect(path):
        computed.append(Path(path).name)
        return np.full((5, 2), 7.0, np.float32)

    monkeypatch.setattr(lms, "detect_landmarks", detect)
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    store = tmp_path / "landmarks.npz"
    sizes = {s.name: (folder / s.name).stat().st_size for s in samples}
    lms.write_landmarks(store, {samples[0].name: (sizes[samples[0].name], fake_marks(0)),
                               samples[1].name: (sizes[samples[1].name] + 1, fake_marks(1))}, dataset="aaf")
    marks = data.chip_landmarks(folder, samples, store=store)
    assert sorted(computed) == [s.name for s in samples[1:]]  # samples[1]: another file of the same name
    np.testing.assert_array_equal(marks[0], fake_marks(0))
    assert (marks[1:] == 7).all()
    computed.clear()
    data.chip_landmarks(folder, samples, store=store)  # now all in the store or in .cache/
    assert computed == []
    # a store made by another detector version is ignored, with a warning
    monkeypatch.setattr("core.detect.DETECTOR_VERSION", "other/v9")
    with pytest.warns(RuntimeWarning, match="not the current"):
        marks = data.chip_landmarks(folder, samples[:1], store=store, cache=False)
    assert computed == [samples[0].name] and (marks == 7).all()


def test_landmarks_cli_computes_what_is_missing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "aaf"
    make_aaf_folder(folder, n=10)
    calls = []

    def detect(path):
        calls.append(path)
        return np.full((5, 2), np.nan if len(calls) % 3 == 0 else 5.0, np.float32)

    monkeypatch.setattr(lms, "detect_landmarks", detect)
    split_dir = tmp_path / "split"
    assert lm.main(["--data-dir", str(folder), "--split-dir", str(split_dir)]) == 0
    table, header = lms.read_landmarks(split_dir / "landmarks.npz")
    assert len(table) == 10 and header["n"] == 10 and header["n_face"] == 7 and header["dataset"] == "aaf"
    assert "7 of 10 images have a face" in capsys.readouterr().out
    assert lm.main(["--data-dir", str(folder), "--split-dir", str(split_dir)]) == 0
    assert len(calls) == 10 and "computing 0" in capsys.readouterr().out
    assert lm.main(["--data-dir", str(folder), "--split-dir", str(split_dir), "--force", "--limit", "4"]) == 0
    assert len(calls) == 14 and len(lms.read_landmarks(split_dir / "landmarks.npz")[0]) == 10
    assert header["settings"]["face"] == "largest" and header["detector"] and header["created"]
    assert lm.main(["--data-dir", str(tmp_path / "nope")]) == 2


def test_landmarks_check_compares_the_store_with_detection_now(tmp_path, monkeypatch, capsys):
    """``--check`` re-detects a sample and counts identical entries, the largest difference, faces lost and
    gained; it writes nothing."""
    folder = tmp_path / "aaf"
    make_aaf_folder(folder, n=6)
    samples, _ = scan(folder)
    names = [s.name for s in samples]
    nan = np.full((5, 2), np.nan, np.float32)
    stored = {names[0]: fake_marks(0), names[1]: fake_marks(1), names[2]: nan, names[3]: nan,
              names[4]: fake_marks(4), names[5]: fake_marks(5)}
    now = {names[0]: fake_marks(0), names[1]: fake_marks(1) + 0.75, names[2]: nan, names[3]: fake_marks(3),
           names[4]: nan, names[5]: fake_marks(5) + 1e-4}
    split_dir = tmp_path / "split"
    store = split_dir / "landmarks.npz"
    lms.write_landmarks(store, {n: ((folder / n).stat().st_size, m) for n, m in stored.items()}, dataset="aaf")
    written = store.read_bytes()
    monkeypatch.setattr(lms, "detect_landmarks", lambda path: now[Path(path).name])
    r = lm.check(folder, split_dir, sample=100)
    assert (r["checked"], r["identical"], r["faces_lost"], r["faces_gained"]) == (6, 3, 1, 1)
    assert r["max_diff_px"] == 0.75
    assert lm.main(["--data-dir", str(folder), "--split-dir", str(split_dir), "--check", "100"]) == 0
    assert "3 of 6 images as stored" in capsys.readouterr().out
    assert store.read_bytes() == written
    assert lm.check(folder, split_dir, sample=2)["checked"] == 2


# ---- augmentation and the tf.data pipelines ------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces(astronaut_chip) -> np.ndarray:
    """Four 48 px crops of a real face, slightly different."""
    import cv2

    chip = cv2.resize(astronaut_chip, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.clip(np.stack([chip * g for g in (0.8, 0.9, 1.0, 1.1)]), 0, 255).astype(np.uint8)


PER_IMAGE = {"random_blur": {}, "random_lowres": {"side": (12, 20)}, "random_jpeg": {}}
PER_BATCH = {"random_affine": {}, "random_light": {}, "random_colour": {}, "random_grayscale": {},
             "random_erasing": {}, "random_old_photo": {}}


@pytest.mark.parametrize("name", [*PER_IMAGE, *PER_BATCH, "photo_image", "photo_batch"])
def test_each_augmentation_keeps_shape_dtype_and_range(name, faces):
    import tensorflow as tf

    from train import augment

    fn = getattr(augment, name)
    per_image = name in PER_IMAGE or name == "photo_image"
    x = tf.constant(faces[0] if per_image else faces, tf.float32)
    kwargs = {**PER_IMAGE.get(name, {}), **PER_BATCH.get(name, {})}
    if "p" in fn.__code__.co_varnames[:fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount]:
        kwargs["p"] = 1.0
        np.testing.assert_array_equal(fn(x, tf.constant([1, 2]), **{**kwargs, "p": 0.0}).numpy(), x.numpy())
    changed = False
    for seed in range(4):
        out = fn(x, tf.constant([seed, 7]), **kwargs)
        assert out.shape == x.shape and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
        np.testing.assert_array_equal(out.numpy(), fn(x, tf.constant([seed, 7]), **kwargs).numpy())  # seeded
        changed |= not np.allclose(out.numpy(), x.numpy(), atol=1.0)
    assert changed


def test_affine_warp_without_jitter_is_identity_or_an_exact_flip(faces):
    import tensorflow as tf

    from train.augment import random_affine

    x = tf.constant(faces, tf.float32)
    still = dict(rotation_deg=0.0, scale=0.0, shift=0.0)
    np.testing.assert_allclose(random_affine(x, tf.constant([0, 1]), p_flip=0.0, **still).numpy(), faces, atol=1e-3)
    np.testing.assert_allclose(random_affine(x, tf.constant([0, 1]), p_flip=1.0, **still).numpy(),
                               faces[:, :, ::-1], atol=1e-3)


@pytest.mark.parametrize("augment", ["basic", "photo"])
def test_augmentation_runs_only_in_training(augment, faces):
    from core.vggface import VGGFACE_MEAN_BGR, preprocess_input
    from train.data import make_dataset

    x = np.concatenate([faces] * 3)
    y = np.arange(len(x), dtype=np.float32)
    val = list(make_dataset(x, y, batch_size=5, training=False, augment=augment))
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in val]), preprocess_input(x))
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in val]), y)
    train = list(make_dataset(x, y, batch_size=5, training=True, seed=3, augment=augment))
    images = np.concatenate([b[0].numpy() for b in train])
    targets = np.concatenate([b[1].numpy() for b in train])
    assert images.shape == x.shape and images.dtype == np.float32 and sorted(targets) == list(y)
    rgb = images[..., ::-1] + np.array(VGGFACE_MEAN_BGR[::-1], np.float32)
    assert rgb.min() >= -1e-3 and rgb.max() <= 255 + 1e-3
    assert not np.allclose(rgb, x[targets.astype(int)], atol=2)


def mixed_targets(weights, *, seed, n=4000, augment="none", epochs=1):
    from train.data import make_mixed_dataset

    parts = {"a": (np.zeros((30, 8, 8, 3), np.uint8), np.full(30, 1.0, np.float32)),
             "b": (np.full((10, 8, 8, 3), 200, np.uint8), np.full(10, 2.0, np.float32))}
    ds = make_mixed_dataset(parts, batch_size=50, weights=weights, seed=seed, augment=augment,
                            examples_per_epoch=n)
    return [np.concatenate([b[1].numpy() for b in ds]) for _ in range(epochs)]


def test_mixing_honours_the_weights_and_is_seeded():
    (first,) = mixed_targets({"a": 1, "b": 3}, seed=1)
    assert len(first) == 4000 and abs(np.mean(first == 2.0) - 0.75) < 0.03
    (proportional,) = mixed_targets(None, seed=1)  # default: shares proportional to size (30 : 10)
    assert abs(np.mean(proportional == 2.0) - 0.25) < 0.03
    assert np.array_equal(mixed_targets({"a": 1, "b": 3}, seed=1)[0], first)  # same seed, same draws
    assert not np.array_equal(mixed_targets({"a": 1, "b": 3}, seed=2)[0], first)
    (only_a,) = mixed_targets({"a": 1, "b": 0}, seed=1, n=100)
    assert set(only_a) == {1.0}
    epoch1, epoch2 = mixed_targets({"a": 1, "b": 1}, seed=1, n=400, epochs=2, augment="photo")
    assert len(epoch1) == len(epoch2) == 400 and not np.array_equal(epoch1, epoch2)  # a new draw each epoch
    with pytest.raises(ValueError, match="no such dataset"):
        mixed_targets({"a": 1, "b": 1, "c": 1}, seed=1)
    with pytest.raises(ValueError, match="positive sum"):
        mixed_targets({"a": 0, "b": 0}, seed=1)


def test_one_dataset_sees_every_image_once_per_epoch_in_a_new_order():
    from train.data import make_dataset

    x = np.zeros((23, 8, 8, 3), np.uint8)
    ds = make_dataset(x, np.arange(23, dtype=np.float32), batch_size=5, training=True, seed=0, augment="basic")
    orders = [np.concatenate([b[1].numpy() for b in ds]) for _ in range(2)]
    assert all(sorted(o) == list(range(23)) for o in orders) and not np.array_equal(*orders)


def test_unknown_race_is_masked_in_multitask_batches():
    from train.data import labels, make_dataset

    samples = [Sample("a", 30, 0, 2), Sample("b", 40, 1, -1, "aaf")]
    (x, y, w), = make_dataset(np.zeros((2, 8, 8, 3), np.uint8), labels(samples, "multitask"), batch_size=2,
                              training=False)
    assert list(y["race"].numpy()) == [2, 0] and list(w["race"].numpy()) == [1.0, 0.0]
    assert list(w["age"].numpy()) == [1.0, 1.0] and list(y["age"].numpy()) == [30, 40]


def test_age_bins_and_their_shares():
    from train.data import age_bins, bin_shares

    assert list(age_bins(np.array([0, 4, 5, 19, 79, 80, 116]))) == [0, 0, 1, 3, 15, 16, 16]
    bins = np.array([0] * 90 + [1] * 10)
    assert bin_shares(bins, 0.0) == pytest.approx({0: 0.9, 1: 0.1})
    assert bin_shares(bins, 1.0) == pytest.approx({0: 0.5, 1: 0.5})
    assert bin_shares(bins, 0.5) == pytest.approx({0: 3 / 4, 1: 1 / 4})  # sqrt(90) : sqrt(10) = 3 : 1
    with pytest.raises(ValueError, match="between|in \\[0, 1\\]"):
        bin_shares(bins, 1.5)


def test_age_balance_shows_rare_ages_more_often_and_still_every_one():
    from train.data import make_mixed_dataset

    ages = np.array([30.0] * 90 + [3.0] * 10, np.float32)  # 90 adults, 10 small children
    x = np.zeros((100, 8, 8, 3), np.uint8)

    def draw(balance, seed=1):
        ds = make_mixed_dataset({"a": (x, ages)}, batch_size=50, seed=seed, augment="none",
                                examples_per_epoch=4000, ages={"a": ages}, age_balance=balance)
        return np.concatenate([b[1].numpy() for b in ds])

    natural, half, even = draw(0.0), draw(0.5), draw(1.0)
    assert len(natural) == len(half) == len(even) == 4000
    assert abs(np.mean(natural == 3.0) - 0.10) < 0.03
    assert abs(np.mean(half == 3.0) - 0.25) < 0.03
    assert abs(np.mean(even == 3.0) - 0.50) < 0.03
    assert np.array_equal(draw(0.5), half) and not np.array_equal(draw(0.5, seed=2), half)
    with pytest.raises(ValueError, match="ages"):
        make_mixed_dataset({"a": (x, ages)}, batch_size=50, augment="none", age_balance=0.5)
