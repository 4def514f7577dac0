"""Never a wrong manifest: resume keyed on what was run, uids that are unique, inputs that changed.

Each test is an attack that once ended in a wrong manifest with exit code 0 (or a traceback).
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.pipeline.test_cli import assert_one_line_error, winnow
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards
from winnow.pipeline.run import execute
from winnow.stages.errors import WinnowError

pytestmark = pytest.mark.torture


def _manifest(out) -> pa.Table:
    return pq.read_table(os.path.join(out, "manifest")).sort_by("uid")


def _comparable(table: pa.Table) -> pa.Table:
    return table.select(sorted(table.column_names))


@pytest.mark.parametrize("flag", ["--fresh", "--resume=force"])
def test_changed_pipeline_in_the_same_output_is_refused_then_fresh_or_forced(sample_dir, tmp_path, flag):
    out = tmp_path / "o"
    winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, "--set", "min_words=3", check=True)
    proc = winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, "--set", "min_words=50")
    assert_one_line_error(proc, f"output {out}", "parameter 'min_words': 3 -> 50", "--fresh", "--resume=force")
    proc = winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, "--set", "min_words=50", flag,
                  check=True)
    assert ("warning" in proc.stderr) == (flag == "--resume=force")
    m = _manifest(out)
    words = [len((c or "").split()) for c in m["caption"].to_pylist()]
    kept = pc.is_null(m["reject_stage"]).to_pylist()
    assert not any(k and w < 50 for k, w in zip(kept, words))  # the new rule decided every row
    assert "caption_too_short" in m["reject_reason"].to_pylist()


def test_same_pipeline_resumes_without_asking(sample_dir, tmp_path):
    out = tmp_path / "o"
    winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, check=True)
    first = _manifest(out)
    proc = winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, check=True)
    assert "resumed 4/4 shards" in proc.stderr
    assert _manifest(out).equals(first)


def test_a_shard_added_before_the_others_is_run_and_nothing_shifts(sample_dir, tmp_path):
    """The shard sorts first, so every other shard's position in the listing moves by one."""
    pool = tmp_path / "pool"
    shutil.copytree(sample_dir, pool, ignore=shutil.ignore_patterns("ground_truth"))
    spec = {"input": str(pool), "stages": [{"stage": "basic_filter"}, {"stage": "dedup_image"}]}
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    execute(parse_pipeline(spec), str(out), progress=False)
    added = pq.read_table(pool / "shard-00000.parquet").slice(0, 50)
    added = added.set_column(added.schema.get_field_index("uid"), "uid",
                             pa.array([f"added-{i}" for i in range(50)]))
    pq.write_table(added, pool / "0-added.parquet")
    stats = execute(parse_pipeline(spec), str(out), progress=False)
    assert stats["resumed"] == "resumed 4/5 shards; 1 new or changed"
    execute(parse_pipeline(spec), str(fresh), progress=False)
    m = _manifest(out)
    assert m.num_rows == 450 == stats["rows_in"] and len(set(m["uid"].to_pylist())) == 450
    assert _comparable(m).equals(_comparable(_manifest(fresh)))
    # the added rows are copies of rows in shard-00000: dedup finds them across shards, in either direction
    dups = m.filter(pc.equal(m["reject_reason"], "dup:image"))
    pairs = zip(dups["uid"].to_pylist(), dups["dup_of"].to_pylist())
    assert sum(u.startswith("added-") != d.startswith("added-") for u, d in pairs) >= 40

    os.remove(pool / "shard-00003.parquet")  # a shard removed: its rows leave the manifest
    stats = execute(parse_pipeline(spec), str(out), progress=False)
    left = sum(pq.read_metadata(s.path).num_rows for s in list_shards(str(pool)))
    assert _manifest(out).num_rows == left == stats["rows_in"]
    assert len(os.listdir(out / "manifest")) == 4


def test_new_weights_saved_in_a_model_directory_are_not_resumed_over(sample_dir, tmp_path):
    """A Hugging Face model directory is a parameter like a checkpoint file: its files are fingerprinted."""
    from winnow.stages.models.tiny_classifier import build_tiny_classifier

    model = build_tiny_classifier("tiny-vit", str(tmp_path / "clf"), seed=0)
    cfg = parse_pipeline({"input": str(sample_dir / "shard-00000.parquet"), "stages": [
        {"stage": "image_classify", "model": model, "labels": {"pwatermark": "watermark"}}]})
    execute(cfg, str(tmp_path / "o"), progress=False)
    first = _manifest(tmp_path / "o")["pwatermark"]
    build_tiny_classifier("tiny-vit", model, seed=1)  # retrained, saved over the same path
    with pytest.raises(WinnowError, match=r"stage 'image_classify' files changed"):
        execute(cfg, str(tmp_path / "o"), progress=False)
    execute(cfg, str(tmp_path / "o"), progress=False, fresh=True)
    assert not _manifest(tmp_path / "o")["pwatermark"].equals(first)


def test_a_changed_shard_is_rerun(sample_dir, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(sample_dir, pool, ignore=shutil.ignore_patterns("ground_truth"))
    spec = {"input": str(pool), "stages": [{"stage": "basic_filter"}]}
    execute(parse_pipeline(spec), str(tmp_path / "out"), progress=False)
    shard = pool / "shard-00002.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption",
                                    pa.array(["x"] * table.num_rows)), shard)  # every caption now too short
    stats = execute(parse_pipeline(spec), str(tmp_path / "out"), progress=False)
    assert stats["resumed"] == "resumed 3/4 shards; 1 new or changed"
    m = _manifest(tmp_path / "out")
    changed = m.filter(pc.is_in(m["uid"], table["uid"]))
    assert set(changed["reject_reason"].to_pylist()) <= {"caption_too_short", "caption_empty"}


def test_truncated_part_stats_are_redone(sample_dir, tmp_path):
    spec = {"input": str(sample_dir), "stages": [{"stage": "basic_filter"}]}
    execute(parse_pipeline(spec), str(tmp_path), progress=False)
    first = _manifest(tmp_path)
    stats = tmp_path / "work" / "seg-0" / f"part-{list_shards(str(sample_dir))[1].stem}.parquet.stats.json"
    stats.write_text(stats.read_text()[:25])
    result = execute(parse_pipeline(spec), str(tmp_path), progress=False)
    assert result["resumed"] == "resumed 3/4 shards; 1 new or changed"
    assert json.loads(stats.read_text())["basic_filter"]["rows_in"] == 100
    assert _manifest(tmp_path).equals(first)


def test_repeated_and_null_input_uids_are_one_clear_error(tmp_path):
    base = {"url": [f"http://h/{i}" for i in range(4)], "caption": ["a photo of a dog"] * 4}
    pq.write_table(pa.table({"uid": ["a", "b", "a", "c"], **base}), tmp_path / "dup.parquet")
    pq.write_table(pa.table({"uid": ["a", None, "c", "d"], **base}), tmp_path / "null.parquet")
    proc = winnow("stage", "basic_filter", "--input", tmp_path / "dup.parquet", "--output", tmp_path / "o1")
    assert_one_line_error(proc, "dup.parquet", "'a'", "more than once")
    proc = winnow("stage", "basic_filter", "--input", tmp_path / "null.parquet", "--output", tmp_path / "o2")
    assert_one_line_error(proc, "null.parquet", "null", "row 1")


def test_uids_repeated_across_shards_are_one_clear_error(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for name, uids in (("a", ["u1", "u2"]), ("b", ["u3", "u2"])):
        pq.write_table(pa.table({"uid": uids, "url": [f"http://h/{name}{u}" for u in uids],
                                 "caption": ["a photo of a dog"] * 2}), pool / f"{name}.parquet")
    with pytest.raises(WinnowError, match="uid 'u2' occurs in more than one input shard"):
        execute(parse_pipeline({"input": str(pool), "stages": [{"stage": "basic_filter"}]}), str(tmp_path / "o"),
                progress=False)


def test_derived_uids_are_unique_even_for_identical_rows(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    rows = {"url": ["http://h/same.jpg"] * 3, "caption": ["the same caption"] * 3}
    for name in ("a", "b"):
        pq.write_table(pa.table(rows), pool / f"{name}.parquet")
    spec = {"input": str(pool), "stages": [{"stage": "dedup_url"}]}
    execute(parse_pipeline(spec), str(tmp_path / "o"), progress=False)
    m = _manifest(tmp_path / "o")
    assert m.num_rows == 6 and len(set(m["uid"].to_pylist())) == 6
    dups = m.filter(pc.is_valid(m["dup_of"]))
    assert dups.num_rows == 5 and not any(u == d for u, d in zip(dups["uid"].to_pylist(), dups["dup_of"].to_pylist()))
    execute(parse_pipeline(spec), str(tmp_path / "again"), progress=False)
    assert _manifest(tmp_path / "again")["uid"].equals(m["uid"])  # the same input gives the same uids


@pytest.mark.parametrize("runner", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_input_columns_named_like_winnows_own_are_set_aside(tmp_path, runner, request):
    if runner == "ray":
        request.getfixturevalue("ray_local")
    pq.write_table(pa.table({"url": [f"http://h/{i}" for i in range(6)], "caption": ["a photo of a cat"] * 6,
                             "reject_stage": pa.array(range(6), pa.int64()), "reject_reason": ["old"] * 6,
                             "__winnow_shard": pa.array(range(6), pa.int64()), "__shard": ["x"] * 6}),
                   tmp_path / "in.parquet")
    spec = {"input": str(tmp_path / "in.parquet"), "stages": [{"stage": "basic_filter", "min_words": 6}]}
    execute(parse_pipeline(spec), str(tmp_path / "o"), runner=runner, progress=False)
    m = _manifest(tmp_path / "o")
    assert m["input_reject_stage"].to_pylist() == list(range(6)) and m["input_winnow_shard"].to_pylist() == list(
        range(6))
    assert m["__shard"].to_pylist() == ["x"] * 6
    assert set(m["reject_reason"].to_pylist()) == {"caption_too_short"}  # decided by this run, not the input


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_a_stage_needing_a_column_nothing_provides_fails_before_running(tmp_path, runner):
    pq.write_table(pa.table({"url": ["http://h/1"], "caption": ["a photo of a cat"]}), tmp_path / "in.parquet")
    spec = tmp_path / "p.yaml"
    spec.write_text(f"input: {tmp_path / 'in.parquet'}\noutput: {tmp_path / 'o'}\n"
                    "stages:\n  - stage: basic_filter\n  - stage: dedup_phash\n")
    proc = winnow("run", spec, "--runner", runner)
    assert_one_line_error(proc, "stage 'dedup_phash' needs column 'image'", "no earlier stage (basic_filter)")
    assert not (tmp_path / "o" / "work").exists()  # nothing ran


def _tmpfs(path, size="2m"):
    path.mkdir()
    if os.system(f"mount -t tmpfs -o size={size} tmpfs '{path}' 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk attack is not run")
    return path


@pytest.mark.parametrize("command", ["stage", "run-local", pytest.param("run-ray", marks=pytest.mark.ray)])
def test_full_disk_is_one_line_and_nothing_half_written_counts_as_done(sample_dir, tmp_path, command):
    full = _tmpfs(tmp_path / "full")
    out = full / "o"
    try:
        # --quiet: the disk may fill only after a shard's progress line (checkpoints hold no image bytes)
        if command == "stage":
            proc = winnow("stage", "basic_filter", "--input", sample_dir, "--output", out, "--kept", "--quiet")
        else:
            spec = tmp_path / "p.yaml"
            spec.write_text(f"input: {sample_dir}\noutput: {out}\nstages:\n  - stage: basic_filter\n")
            proc = winnow("run", spec, "--runner", command.split("-")[1], "--quiet")
        if command == "run-ray":  # Ray's own C++ core logs a line of its own when a worker's task fails
            proc.stderr = "\n".join(line for line in proc.stderr.splitlines() if "core_worker.cc" not in line)
        assert_one_line_error(proc, f"output {out}", "No space left on device")
        leftovers = [f for _, _, files in os.walk(out) for f in files if ".tmp-" in f]
        assert leftovers == [] and not (out / "stats.json").exists()
        for part in (out / "work" / "seg-0").glob("part-*.parquet"):
            pq.read_metadata(part)  # any part present is whole
    finally:
        os.system(f"umount '{full}'")
