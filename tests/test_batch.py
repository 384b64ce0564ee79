"""python -m core batch (local engine) and what both engines share: inputs, rows, outputs."""

from __future__ import annotations

import json
import zipfile

import pytest

from core.__main__ import main
from core.batch import CSV_FIELDS, BatchError, Source, check_output, list_sources, read_source
from core.errors import InvalidImage


def test_sources_from_folders_zips_lists_and_uris(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "skip.txt").write_text("not listed: a folder gives its images only")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("in/y.png", b"y")
        z.writestr("in/readme.md", b"skipped")
    (tmp_path / "list.txt").write_text(f"# photos\nz.zip\n\n{tmp_path / 'a' / 'x.jpg'}\nmissing.jpg\n"
                                       f"file://{tmp_path / 'a'}\n")
    names = [s.name for s in list_sources([str(tmp_path / "list.txt")])]
    assert names == [str(tmp_path / "z.zip/in/y.png"), str(tmp_path / "a/x.jpg"), str(tmp_path / "missing.jpg"),
                     f"file://{tmp_path / 'a' / 'x.jpg'}"]
    sources = list_sources([str(tmp_path / "list.txt")])
    assert read_source(sources[0]) == b"y" and read_source(sources[3]) == b"x"
    assert read_source(sources[1]) == tmp_path / "a" / "x.jpg"
    with pytest.raises(InvalidImage, match="missing.jpg does not exist"):
        read_source(sources[2])
    with pytest.raises(InvalidImage, match="uncompressed; the limit is 0 MiB"):
        read_source(sources[0], max_bytes=0)
    with pytest.raises(InvalidImage, match="does not exist"):
        read_source(Source("gone", f"file://{tmp_path}/gone.jpg"))


def test_outputs_refused_before_any_work(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_bytes(b"")
    with pytest.raises(BatchError, match="not an empty folder"):
        check_output(str(tmp_path / "full"), "parquet")
    with pytest.raises(BatchError, match="does not exist"):
        check_output(str(tmp_path / "nowhere" / "rows.csv"), "csv")
    check_output(str(tmp_path / "new"), "parquet")
    check_output(str(tmp_path / "rows.csv"), "csv")


def test_batch_local_parquet_and_jsonl(tmp_path, astronaut_jpeg, tiny_models, capsys):
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(astronaut_jpeg)
    (tmp_path / "in" / "bad.jpg").write_text("not a photo")
    (tmp_path / "paths.lst").write_text("in/a.jpg\n")
    common = ["--models-dir", str(tiny_models)]
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *common]) == 1
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert list(rows[0]) == CSV_FIELDS and [r["status"] for r in rows] == ["ok", "error"]
    # the contract: columns only ever added at the end, so readers by position keep working
    assert CSV_FIELDS == ["file", "status", "face", "x", "y", "w", "h", "confidence", "age", "age_low", "age_high",
                          "gender", "female_probability", "gender_reliable", "gender_note", "error", "cut_by_frame"]
    assert rows[0]["cut_by_frame"] is False and rows[1]["cut_by_frame"] is None
    assert "2 images, 1 faces, 0 without a face, 1 unreadable" in capsys.readouterr().err

    assert main(["batch", str(tmp_path / "paths.lst"), "-o", str(tmp_path / "rows.jsonl"), *common]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["age"] == rows[0]["age"] and "error" not in row

    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *common]) == 2  # not empty
    assert main(["batch", str(tmp_path / "paths.txt"), "-o", str(tmp_path / "x.csv"), *common]) == 1  # a missing file
    assert main(["batch", str(tmp_path / "nothing"), "-o", str(tmp_path / "y.csv"), *common]) == 1
    err = capsys.readouterr().err
    assert "already exists and is not an empty folder" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "z.csv"), "--address", "auto"])
    assert "--address and --concurrency need --engine ray" in capsys.readouterr().err


def test_batch_with_no_image_is_an_error(tmp_path, tiny_models, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "r.csv"
    assert main(["batch", str(tmp_path / "empty"), "-o", str(out), "--models-dir", str(tiny_models)]) == 2
    assert "error: no image found in" in capsys.readouterr().err
    assert not out.exists()
