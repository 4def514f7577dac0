"""Checkpoints without image bytes (pipeline/rowrefs.py): parts refer to their input rows, bytes come back
from the input where a stage reads them and for the kept set.

The reference is the layout before: the same runs with every part keeping its image bytes (``plan_images``
replaced by one that keeps them everywhere). Manifests and kept sets must be identical to it on both
runners, the kept rows' bytes must equal the input's, and no part may hold any of the input's bytes.
"""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from winnow.pipeline import fingerprint, rowrefs
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards
from winnow.pipeline.plan import make_plan
from winnow.pipeline.run import execute
from winnow.stages import registry
from winnow.stages.errors import WinnowError

# seg-0: basic_filter, dedup_image (prepare) | seg-1: dedup_phash (prepare; reads images again) |
# seg-2: caption_mix (reads no image; the kept set is written in its pass, bytes from the input)
STAGES = [{"stage": "basic_filter"}, {"stage": "dedup_image"}, {"stage": "dedup_phash"},
          {"stage": "caption_mix", "synthetic_column": "caption", "synthetic_ratio": 0.5}]


def run(input_dir, out, stages=STAGES, runner="local"):
    cfg = parse_pipeline({"input": str(input_dir), "output": str(out), "stages": stages})
    return execute(cfg, str(out), runner=runner, progress=False)


def with_bytes_everywhere(monkeypatch):
    """The layout before this change: every part keeps the image bytes, nothing is read back."""
    def keep_all(segments):
        n = len(list(segments))
        return rowrefs.ImagePlan(keep=(True,) * n, needs=(False,) * n)

    monkeypatch.setattr(rowrefs, "plan_images", keep_all)


def tables(out, folder) -> dict[str, pa.Table]:
    path = os.path.join(str(out), folder)
    return {n: pq.read_table(os.path.join(path, n)) for n in sorted(os.listdir(path))}


def parts(out) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(os.path.join(str(out), "work"))
            for n in names if n.startswith("part-") and n.endswith(".parquet")]


def assert_no_input_bytes(out, shard_bytes: int):
    """Every part keeps the image column with no value in it, and weighs a small fraction of its input shard."""
    found = parts(out)
    assert found
    for path in found:
        t = pq.read_table(path)
        assert "image" in t.column_names and t["image"].null_count == t.num_rows, path  # column kept, values not
        assert os.path.getsize(path) < shard_bytes / 20, (path, os.path.getsize(path), shard_bytes)


def input_images(input_dir) -> dict[str, bytes]:
    t = pa.concat_tables([pq.read_table(p, columns=["uid", "image"]) for p in sorted(input_dir.glob("*.parquet"))])
    return dict(zip(t["uid"].to_pylist(), t["image"].to_pylist()))


@pytest.fixture(scope="module")
def before(sample_dir, tmp_path_factory):
    """The pipeline run in the layout before (bytes in every part), the reference of every run here."""
    mp = pytest.MonkeyPatch()
    with_bytes_everywhere(mp)
    try:
        out = tmp_path_factory.mktemp("before") / "out"
        run(sample_dir, out)
    finally:
        mp.undo()
    return out


def assert_same_outputs(out, reference, sample_dir):
    manifest, kept = tables(out, "manifest"), tables(out, "kept")
    assert manifest.keys() == tables(reference, "manifest").keys() and len(manifest) == 4
    for name, table in manifest.items():
        assert table.equals(tables(reference, "manifest")[name]), name
    for name, table in kept.items():
        assert table.equals(tables(reference, "kept")[name]), name
    rows = pa.concat_tables(kept.values())
    rejected = pc.value_counts(pa.concat_tables(manifest.values())["reject_reason"]).to_pylist()
    assert {"dup:image", "dup:phash"} <= {r["values"] for r in rejected}  # both barriers decided something
    source = input_images(sample_dir)
    assert rows.num_rows > 0 and all(img == source[u] for u, img in zip(rows["uid"].to_pylist(),
                                                                         rows["image"].to_pylist()))


def test_plan_keeps_produced_bytes_and_reads_them_back_only_where_needed(sample_dir):
    stages = parse_pipeline({"input": str(sample_dir), "stages": STAGES}).build_stages()
    plan = rowrefs.plan_images(make_plan(stages))
    assert plan.keep == (False, False, False)  # no part keeps the input's bytes
    assert plan.needs == (True, True, False)  # dedup_phash reads them after the barrier; caption_mix does not
    assert [plan.attach_at_start(k) for k in range(3)] == [False, True, False] and plan.kept_from_input()
    fetched = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "dedup_url"}, {"stage": "download"}, {"stage": "dedup_phash"}]}).build_stages()
    plan = rowrefs.plan_images(make_plan(fetched))
    assert plan.keep == (False, True) and not plan.kept_from_input()  # download's images are its own: kept


def test_every_builtin_stage_says_which_methods_read_images():
    """An undeclared stage gets the input's bytes everywhere (safe, and what checkpoints were meant to avoid)."""
    assert [n for n, cls in registry().items() if cls.reads_image is None and not n.startswith("test_")] == []


def test_local_run_without_bytes_in_checkpoints_equals_the_layout_before(sample_dir, tmp_path, before):
    out = tmp_path / "out"
    run(sample_dir, out)
    assert_same_outputs(out, before, sample_dir)
    assert_no_input_bytes(out, min(p.stat().st_size for p in sample_dir.glob("*.parquet")))


def test_final_barrier_reads_kept_bytes_from_the_input(sample_dir, tmp_path, monkeypatch):
    """The run ends with a group barrier: the kept set is written after the run, from grouped parts."""
    stages = STAGES[:3]
    run(sample_dir, tmp_path / "now", stages)
    with_bytes_everywhere(monkeypatch)
    run(sample_dir, tmp_path / "before", stages)
    for folder in ("manifest", "kept"):
        now, ref = tables(tmp_path / "now", folder), tables(tmp_path / "before", folder)
        assert now.keys() == ref.keys() and all(now[n].equals(ref[n]) for n in now)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_run_without_bytes_in_checkpoints_equals_the_layout_before(ray_local, sample_dir, tmp_path, before,
                                                                       monkeypatch):
    """Small Ray Data blocks split the shards, so pieces go through block files (which hold no bytes either)
    and the kept rows of a merged shard come from the input."""
    from ray.data import DataContext

    from winnow.pipeline.runners.ray_data.tracker import Tracker

    merged = []  # shards the driver had merged from pieces
    merge = Tracker._merge
    monkeypatch.setattr(Tracker, "_merge", lambda self, pieces: (merged.append(len(pieces)), merge(self, pieces))[1])
    ctx = DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = 256 * 1024
    try:
        run(sample_dir, tmp_path / "out", runner="ray")
    finally:
        ctx.target_max_block_size = saved
    assert merged and max(merged) > 1
    assert_same_outputs(tmp_path / "out", before, sample_dir)
    assert_no_input_bytes(tmp_path / "out", min(p.stat().st_size for p in sample_dir.glob("*.parquet")))


def test_parts_of_the_layout_before_are_redone_not_mixed(sample_dir, tmp_path, monkeypatch, before):
    """Checkpoints written with bytes inside (no layout version) are never reused: every piece is redone."""
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        with_bytes_everywhere(mp)
        mp.setattr(fingerprint, "CHECKPOINT_LAYOUT", 1)
        run(sample_dir, out)
    stamps = {p: os.stat(p).st_mtime_ns for p in parts(out)}
    stats = run(sample_dir, out)  # same pipeline: resumes, but no piece matches
    assert "resumed" not in stats
    assert all(os.stat(p).st_mtime_ns != t for p, t in stamps.items())
    assert_same_outputs(out, before, sample_dir)
    assert_no_input_bytes(out, min(p.stat().st_size for p in sample_dir.glob("*.parquet")))


def test_input_images_reads_only_the_row_groups_holding_the_rows(tmp_path):
    images = [bytes([i]) * (i + 1) for i in range(50)]
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(50)], "jpg": pa.array(images, pa.large_binary()),
                             "text": ["x"] * 50}), path, row_group_size=8)
    shard = list_shards(str(path.parent))[0]
    positions = np.array([0, 7, 8, 9, 31, 49])
    got = rowrefs.input_images(shard, {}, positions, expected_rows=50)
    assert got.type == pa.large_binary() and got.to_pylist() == [images[i] for i in positions]
    table = pa.table({"uid": [f"k{i}" for i in range(50)], "image": pa.nulls(50, pa.binary()),
                      "reject_stage": pa.array([None if i % 3 else "s" for i in range(50)], pa.string())})
    attached = rowrefs.attach(table, shard, {}, pc.is_null(table["reject_stage"]))
    assert attached.schema == table.schema
    assert attached["image"].to_pylist() == [images[i] if i % 3 else None for i in range(50)]
    with pytest.raises(WinnowError, match=r"a.parquet: has 50 rows, its checkpoint 49"):
        rowrefs.input_images(shard, {}, positions, expected_rows=49)
    pq.write_table(pa.table({"key": ["k0"], "jpg": [b"other"], "text": ["x"]}), path)
    with pytest.raises(WinnowError, match=r"a.parquet: changed since this run read it"):
        rowrefs.attach(table, shard, {}, pc.is_null(table["reject_stage"]))


def test_tar_input_gets_its_bytes_back_from_the_tar(sample_dir, tmp_path, monkeypatch):
    """A lone webdataset tar, streamed once per re-read: the same outputs as with bytes in the parts."""
    rows = pq.read_table(sorted(sample_dir.glob("*.parquet"))[0]).slice(0, 60).to_pylist()
    tar_path = tmp_path / "pool" / "00000.tar"
    tar_path.parent.mkdir()
    written = {}
    with tarfile.open(tar_path, "w") as tar:
        for i, r in enumerate(rows):
            written[f"s{i:04d}"] = r["image"] or b""
            for ext, data in (("jpg", written[f"s{i:04d}"]), ("txt", (r["caption"] or "").encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    stages = [{"stage": "dedup_image"}, {"stage": "dedup_phash"}, {"stage": "caption_mix",
                                                                   "synthetic_column": "caption"}]
    run(tar_path.parent, tmp_path / "now", stages)
    assert_no_input_bytes(tmp_path / "now", tar_path.stat().st_size)
    with_bytes_everywhere(monkeypatch)
    run(tar_path.parent, tmp_path / "before", stages)
    for folder in ("manifest", "kept"):
        now, ref = tables(tmp_path / "now", folder), tables(tmp_path / "before", folder)
        assert now.keys() == ref.keys() and all(now[n].equals(ref[n]) for n in now)
    kept = pa.concat_tables(tables(tmp_path / "now", "kept").values())
    assert kept.num_rows and all(written[u] == img for u, img in zip(kept["uid"].to_pylist(),
                                                                     kept["image"].to_pylist()))
