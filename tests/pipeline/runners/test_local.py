import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards
from winnow.pipeline.run import execute
from winnow.stages.base import GlobalStage, GroupStage, Param
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError


class KeepLongestCaptions(GlobalStage):
    """Toy global stage: keep the top fraction of the whole run by caption length."""

    name = "test_keep_longest"
    params = (Param("fraction", float, 0.5, "fraction to keep"),)
    requires = ("caption",)

    def produces(self):
        return {"caption_len": pa.int64()}

    def prepare(self, table):
        return set_column(table, "caption_len", pc.utf8_length(pc.fill_null(table["caption"], "")).cast(pa.int64()))

    def partial(self, table):
        return table["caption_len"].to_pylist()

    def combine(self, parts):
        return sorted(x for p in parts for x in p)

    def finalize(self, combined):
        k = max(1, int(len(combined) * self.fraction))
        return {"threshold": combined[-k] if combined else 0}

    def apply(self, table, artifact):
        lens = table["caption_len"].to_pylist()
        return self.reject(table, [None if n >= artifact["threshold"] else "too_short_globally" for n in lens])


class ExactCaptionDedup(GroupStage):
    """Toy group stage: rows with identical captions keep the smallest uid."""

    name = "test_caption_dedup"
    key_column = "caption_key"

    def produces(self):
        return {"caption_key": pa.string(), "dup_of": pa.string()}

    def prepare(self, table):
        return set_column(table, "caption_key", table["caption"])

    def decide_group(self, group):
        uids = group["uid"].to_pylist()
        survivor = min(uids)
        group = set_column(group, "dup_of", pa.array([None if u == survivor else survivor for u in uids], pa.string()))
        return self.reject(group, [None if u == survivor else "dup:caption" for u in uids])


def _manifest(out):
    return pq.read_table(os.path.join(out, "manifest")).sort_by("uid")


def test_stage_outputs_stats_and_conservation(sample_dir, tmp_path):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [{"stage": "basic_filter"}]})
    stats = execute(cfg, str(tmp_path), progress=False)
    manifest = _manifest(tmp_path)
    assert manifest.num_rows == 400 == stats["rows_in"]
    assert "image" not in manifest.column_names  # bytes stay out of the decision record
    # one manifest file per input shard, named after the shard (its file name and fingerprint), not its position
    assert sorted(os.listdir(tmp_path / "manifest")) == sorted(f"part-{s.stem}.parquet"
                                                              for s in list_shards(str(sample_dir)))
    st = stats["stages"]["basic_filter"]
    rejected = pc.sum(pc.is_valid(manifest["reject_stage"])).as_py()
    assert st["rows_in"] == 400 and st["kept"] == 400 - rejected == stats["rows_kept"]
    assert sum(st["rejected"].values()) == rejected
    kept = pq.read_table(tmp_path / "kept")
    assert kept.num_rows == stats["rows_kept"] and "image" in kept.column_names
    meta = json.loads((tmp_path / "pipeline.json").read_text())
    assert meta["config"]["stages"][0]["stage"] == "basic_filter"
    assert len(meta["inputs"]) == 4 and meta["versions"]["pyarrow"]
    assert meta["models"]["basic_filter"]["lid_model"].endswith("lid.176.ftz")


def test_planted_problems_rejected_with_reasons(sample_dir, tmp_path):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [{"stage": "basic_filter"}]})
    execute(cfg, str(tmp_path), progress=False)
    truth = pq.read_table(sample_dir / "ground_truth").to_pydict()
    reason = dict(zip(*[_manifest(tmp_path)[c].to_pylist() for c in ("uid", "reject_reason")]))
    expected = {"zero_bytes": {"image_empty"}, "corrupt_image": {"image_undecodable"},
                "tiny_image": {"image_too_small"}, "extreme_aspect": {"aspect_ratio"},
                "empty_caption": {"caption_empty"}, "non_english": {"language:fr", "language:de", "language:es"}}
    for uid, problem in zip(truth["uid"], truth["problem"]):
        if problem in expected:
            assert reason[uid] in expected[problem], (uid, problem, reason[uid])
        elif problem is None:
            assert reason[uid] is None, (uid, reason[uid])


def test_global_and_group_barriers_span_all_shards(tmp_path):
    rows = [("u%02d" % i, "caption " + "x" * (i % 7) + (" dup" if i % 5 == 0 else f" {i}")) for i in range(40)]
    for k in range(4):
        part = rows[k * 10:(k + 1) * 10]
        pq.write_table(pa.table({"uid": [u for u, _ in part], "url": ["http://h/" + u for u, _ in part],
                                 "caption": [c for _, c in part]}), tmp_path / f"in-{k}.parquet")
    cfg = parse_pipeline({"input": str(tmp_path / "in-*.parquet"), "stages": [
        {"stage": f"{__name__}:ExactCaptionDedup", "name": "test_caption_dedup"},
        {"stage": f"{__name__}:KeepLongestCaptions", "name": "test_keep_longest", "fraction": 0.5}]})
    execute(cfg, str(tmp_path / "out"), progress=False)
    m = _manifest(tmp_path / "out")
    dups = m.filter(pc.equal(m["reject_reason"], "dup:caption"))
    # identical captions live in different shards: the group barrier saw them together
    by_caption = {}
    for uid, cap in rows:
        by_caption.setdefault(cap, []).append(uid)
    expected_dups = {u for us in by_caption.values() for u in sorted(us)[1:]}
    assert set(dups["uid"].to_pylist()) == expected_dups
    assert all(d == min(by_caption[c]) for d, c in zip(dups["dup_of"].to_pylist(), dups["caption"].to_pylist()))
    artifact = json.loads((tmp_path / "out" / "artifacts" / "test_keep_longest.json").read_text())
    live = m.filter(pc.is_null(m["reject_stage"]))
    assert min(live["caption_len"].to_pylist()) >= artifact["threshold"]
    assert m.num_rows == 40


@pytest.mark.torture
def test_rerun_resumes_from_checkpoints_and_is_identical(sample_dir, tmp_path):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [{"stage": "basic_filter"}]})
    execute(cfg, str(tmp_path), progress=False)
    first = _manifest(tmp_path)
    shards = list_shards(str(sample_dir))
    done = tmp_path / "work" / "seg-0" / f"part-{shards[1].stem}.parquet"
    mtime = done.stat().st_mtime_ns
    os.remove(tmp_path / "work" / "seg-0" / f"part-{shards[2].stem}.parquet")  # as if the run died there
    execute(cfg, str(tmp_path), progress=False)
    assert done.stat().st_mtime_ns == mtime  # finished shard not redone
    assert _manifest(tmp_path).equals(first)


def test_outputs_written_in_the_last_pass_survive_resume_and_a_write_kept_change(sample_dir, tmp_path):
    """The last pass writes manifest/kept beside each part; a resumed run reuses them, a run that now
    wants the kept set writes it from the parts, and a run ending in a group barrier writes from its parts."""
    spec = {"input": str(sample_dir), "stages": [{"stage": "basic_filter"}]}
    stats = execute(parse_pipeline(spec | {"write_kept": False}), str(tmp_path), progress=False)
    assert not (tmp_path / "kept").exists()
    stem = list_shards(str(sample_dir))[0].stem
    part = tmp_path / "work" / "seg-0" / f"part-{stem}.parquet"
    manifest = tmp_path / "manifest" / f"part-{stem}.parquet"
    written = manifest.stat().st_mtime_ns
    execute(parse_pipeline(spec | {"write_kept": False}), str(tmp_path), progress=False)
    assert manifest.stat().st_mtime_ns == written  # resumed: the pass's own outputs are reused
    done = part.stat().st_mtime_ns
    again = execute(parse_pipeline(spec | {"write_kept": True}), str(tmp_path), progress=False)
    assert part.stat().st_mtime_ns == done  # no stage reran: the kept set came from the parts
    assert pq.read_table(tmp_path / "kept").num_rows == again["rows_kept"] == stats["rows_kept"]
    assert again["rows_kept"] == pc.sum(pc.is_null(_manifest(tmp_path)["reject_stage"])).as_py() > 0

    rows = [(f"u{i}", "same caption" if i % 3 == 0 else f"caption {i}") for i in range(12)]
    pq.write_table(pa.table({"uid": [u for u, _ in rows], "url": ["http://h/" + u for u, _ in rows],
                             "caption": [c for _, c in rows]}), tmp_path / "g.parquet")
    out = tmp_path / "grouped"
    execute(parse_pipeline({"input": str(tmp_path / "g.parquet"), "stages": [
        {"stage": f"{__name__}:ExactCaptionDedup", "name": "test_caption_dedup"}]}), str(out), progress=False)
    assert _manifest(out)["reject_reason"].to_pylist().count("dup:caption") == 3
    assert pq.read_table(out / "kept").num_rows == 9


@pytest.mark.torture
def test_missing_required_column_is_one_clear_error(tmp_path):
    pq.write_table(pa.table({"url": ["http://h/1"]}), tmp_path / "in.parquet")
    cfg = parse_pipeline({"input": str(tmp_path / "in.parquet"), "stages": [{"stage": "basic_filter"}]})
    with pytest.raises(WinnowError, match="needs column 'caption'.*in.parquet"):
        execute(cfg, str(tmp_path / "out"), progress=False)
