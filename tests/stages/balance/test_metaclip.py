"""The metaclip stage on real CC3M captions and MetaCLIP's WordNet metadata, through the real runners."""
import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.plan import Step
from winnow.pipeline.run import execute
from winnow.stages import registry
from winnow.stages.balance.metaclip import MetaCLIPBalance
from winnow.stages.errors import WinnowError

ROWS = 4000


@pytest.fixture(scope="module")
def wordnet(shared_data):
    return str(shared_data / "metaclip" / "metadata_wordnet_86654.json")


@pytest.fixture(scope="module")
def reference(shared_data):
    with open(shared_data / "metaclip" / "reference_matches_cc3m_val.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f][:ROWS]


def _write_shards(directory, reference, shards: int):
    """The same ROWS real captions split into ``shards`` Parquet files (uids independent of the split)."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(len(reference)), shards)):
        pq.write_table(pa.table({
            "uid": [f"cc3m-{i:05d}" for i in idx],
            "url": [f"http://example.invalid/{i}.jpg" for i in idx],
            "caption": [reference[i]["text"] for i in idx],
        }), directory / f"part-{k}.parquet")
    return str(directory)


def _run(input_dir, out, runner="local", seed=0, **params):
    cfg = parse_pipeline({"input": input_dir, "seed": seed, "stages": [{"stage": "metaclip", **params}]})
    stats = execute(cfg, str(out), runner=runner, progress=False)
    manifest = pq.read_table(out / "manifest").sort_by("uid")
    with open(out / "artifacts" / "metaclip.json", encoding="utf-8") as f:
        return stats, manifest, json.load(f)


def _kept(manifest):
    return manifest.filter(pc.is_null(manifest["reject_reason"]))["uid"].to_pylist()


def test_registered_with_its_parameters():
    cls = registry()["metaclip"]
    assert cls is MetaCLIPBalance
    assert {"metadata", "version", "t", "target_fraction", "target_rows", "lang_metadata"} <= {p.name for p in
                                                                                                  cls.params}


def test_prepare_gives_the_reference_entry_ids(wordnet, reference):
    texts = [r["text"] for r in reference[:300]] + [None, "", "DOG"]
    stage = MetaCLIPBalance(metadata=wordnet)
    out, _ = Step(stage, "prepare").run(pa.table({"uid": [str(i) for i in range(len(texts))], "caption": texts}))
    got = out["metaclip_entries"].to_pylist()
    assert got[:300] == [sorted(r["v1_wordnet"]) for r in reference[:300]]
    assert got[300:] == [[], [], []]
    assert out.schema.field("metaclip_entries").type == pa.list_(pa.int32())
    assert out["reject_reason"].null_count == len(texts)  # the decision comes after the barrier


def test_target_fraction_run_counts_globally_and_samples_within_three_sd(tmp_path, wordnet, reference):
    inp = _write_shards(tmp_path / "in", reference, 2)
    stats, manifest, art = _run(inp, tmp_path / "out", metadata=wordnet, target_fraction=0.3)
    entries = manifest["metaclip_entries"].to_pylist()
    keep_prob = manifest["metaclip_keep_prob"].to_numpy()
    reasons = manifest["reject_reason"].to_pylist()
    # rows with no entry are no_match; every other rejection is the sampling decision
    assert all((r == "metaclip:no_match") == (not e) for r, e in zip(reasons, entries))
    assert set(reasons) == {None, "metaclip:no_match", "metaclip:balanced_out"}
    # counts are global (both shards) and equal the manifest's own matches
    table = pq.read_table(tmp_path / "out" / "artifacts" / "metaclip.entries.parquet")
    counts = table["count"].to_numpy()
    assert (counts == np.bincount([i for e in entries for i in e], minlength=len(counts))).all()
    t = art["t"]
    probs = table["probability"].to_numpy()
    assert probs == pytest.approx(np.where(counts < t, 1.0, t / np.maximum(counts, 1)))
    # each row's keep probability is 1 - prod(1 - p_e) over its entries
    want = [1 - math.prod(1 - probs[i] for i in e) if e else 0.0 for e in entries]
    assert keep_prob == pytest.approx(want, abs=1e-6)
    # t was solved so that the expected kept rows are 30% of the rows in; the draw is within 3 sd of that
    assert art["expected_kept"] == pytest.approx(0.3 * ROWS, rel=1e-6)
    assert keep_prob.sum() == pytest.approx(0.3 * ROWS, rel=1e-4)
    sd = math.sqrt((keep_prob * (1 - keep_prob)).sum())
    assert abs(stats["rows_kept"] - keep_prob.sum()) < 3 * sd
    assert stats["stages"]["metaclip"]["rows_in"] == ROWS
    # head/tail summary and plot data
    summary = art["summary"]
    assert summary["matches"] == counts.sum() and summary["head_entries"] == int((counts >= t).sum())
    assert summary["top"][0]["count"] == counts.max()
    assert art["curve"]["before"][0] == counts.max() and art["curve"]["after"][0] == pytest.approx(min(counts.max(), t))


def test_same_rows_for_any_sharding_and_on_rerun(tmp_path, wordnet, reference):
    one = _write_shards(tmp_path / "one", reference, 1)
    four = _write_shards(tmp_path / "four", reference, 4)
    for params in ({"t": 30.0}, {"target_rows": 1500, "sample_rows": 700}):  # 700 < rows: bottom-k sample merge
        _, m1, a1 = _run(one, tmp_path / "o1", metadata=wordnet, **params)
        _, m4, a4 = _run(four, tmp_path / "o4", metadata=wordnet, **params)
        assert a1["t"] == a4["t"]
        assert 0 < len(_kept(m1)) < ROWS
        assert _kept(m1) == _kept(m4)
        # resume: decisions recomputed from the artifact read back from JSON are the same
        shutil.rmtree(tmp_path / "o4" / "work" / "seg-1")
        _, again, _ = _run(four, tmp_path / "o4", metadata=wordnet, **params)
        assert again["reject_reason"].to_pylist() == m4["reject_reason"].to_pylist()
        shutil.rmtree(tmp_path / "o1")
        shutil.rmtree(tmp_path / "o4")
    _, m_seed, _ = _run(one, tmp_path / "seed", seed=1, metadata=wordnet, t=30.0)
    assert _kept(m_seed) != _kept(m1)  # the seed does drive the draw


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_runner_keeps_the_same_rows(tmp_path, wordnet, reference, ray_local):
    inp = _write_shards(tmp_path / "in", reference, 3)
    _, local, a_local = _run(inp, tmp_path / "local", metadata=wordnet, target_fraction=0.4)
    _, ray, a_ray = _run(inp, tmp_path / "ray", runner="ray", metadata=wordnet, target_fraction=0.4)
    assert a_ray["t"] == a_local["t"]
    assert _kept(ray) == _kept(local)
    assert ray["metaclip_entries"].to_pylist() == local["metaclip_entries"].to_pylist()
    sidecar = "artifacts/metaclip.entries.parquet"  # both runners write the per-entry table
    assert pq.read_table(tmp_path / "ray" / sidecar).equals(pq.read_table(tmp_path / "local" / sidecar))


def test_per_language_thresholds_follow_metaclip2(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "en.json").write_text(json.dumps(["dog", "cat", "bird"]))
    (meta / "fr.json").write_text(json.dumps(["chien", "chat"]))
    caps = (["a dog"] * 50 + ["a cat"] * 10 + ["a bird"] * 2 + ["un chien"] * 30 + ["un chat"] * 3
            + ["ein Hund"] * 5)
    langs = ["en"] * 62 + ["fr"] * 33 + ["de"] * 5
    pq.write_table(pa.table({"uid": [f"r{i}" for i in range(len(caps))], "url": ["http://x.invalid/"] * len(caps),
                             "caption": caps, "lang": langs}), tmp_path / "in.parquet")
    _, manifest, art = _run(str(tmp_path / "in.parquet"), tmp_path / "out", t=5.0,
                            lang_metadata={"en": str(meta / "en.json"), "fr": str(meta / "fr.json")})
    # en keeps t; fr gets the count whose cumulative share is closest to en's tail share (2/62):
    # fr's sorted counts [3, 30] have shares [0.09, 1.0] -> t_fr = 3
    assert art["thresholds"] == {"en": 5.0, "fr": 3.0}
    assert art["groups"]["fr"]["counts"] == [30, 3] and art["groups"]["en"]["counts"] == [50, 10, 2]
    m = manifest.to_pydict()
    by_caption = {c: (g, e, p) for c, g, e, p in zip(m["caption"], m["metaclip_group"], m["metaclip_entries"],
                                                     m["metaclip_keep_prob"])}
    assert by_caption["un chien"] == ("fr", [0], pytest.approx(0.1))  # ids are within the language's list
    assert by_caption["un chat"][2] == pytest.approx(1.0)
    assert by_caption["a dog"][2] == pytest.approx(0.1) and by_caption["a bird"][2] == pytest.approx(1.0)
    # a language without metadata (and no fallback list) has nothing to match
    de = [r for r, lang in zip(m["reject_reason"], m["lang"]) if lang == "de"]
    assert de == ["metaclip:no_match"] * 5 and by_caption["ein Hund"][0] == "other"


def test_configuration_errors_are_one_clear_line(tmp_path, wordnet):
    with pytest.raises(WinnowError, match="only one of t, target_fraction"):
        MetaCLIPBalance(metadata=wordnet, t=10.0, target_rows=5)
    with pytest.raises(WinnowError, match="set 'metadata'"):
        MetaCLIPBalance()
    with pytest.raises(WinnowError, match="target_fraction"):
        MetaCLIPBalance(metadata=wordnet, target_fraction=1.5)
    with pytest.raises(WinnowError, match="reference_lang 'en'"):
        MetaCLIPBalance(lang_metadata={"fr": wordnet})
    with pytest.raises(WinnowError, match="missing.json: not found"):
        MetaCLIPBalance(metadata=str(tmp_path / "missing.json")).setup()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dog": 1}))
    with pytest.raises(WinnowError, match="JSON list of strings"):
        MetaCLIPBalance(metadata=str(bad)).setup()
    stage = MetaCLIPBalance(metadata=wordnet, text_column="alt")
    with pytest.raises(WinnowError, match="needs column 'alt'"):
        stage.check_columns(pa.schema([("uid", pa.string()), ("caption", pa.string())]), "input x")
