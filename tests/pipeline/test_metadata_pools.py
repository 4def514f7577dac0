"""Metadata pools of the field (column names from ../shared/FORMATS.md), run as users run them: sizes
recognised, scores filtered before any download, a previous run's manifest re-thresholded, and what the
run could not act on said out loud."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipeline.test_cli import assert_one_line_error, winnow
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards, read_shard
from winnow.pipeline.run import execute

CAPTIONS = ["a red bicycle leaning against a brick wall", "two dogs playing in the snow at dusk",
            "a bowl of fresh fruit on a wooden kitchen table", "ok", "the old lighthouse above a stormy sea"]
# (width, height): fine, too small, too elongated, fine, fine
SIZES = [(640, 480), (150, 800), (1200, 300), (256, 256), (800, 1000)]


def _basic_survives(i: int) -> bool:
    (w, h), cap = SIZES[i % 5], CAPTIONS[i % 5]
    return cap != "ok" and min(w, h) >= 200 and max(w, h) <= 3 * min(w, h)


def _pool(kind: str, n: int, seed: int = 0) -> pa.Table:
    """A small metadata table with exactly the source's column names."""
    rng = np.random.default_rng(seed)
    url = [f"http://img.example/{kind}/{i}.jpg" for i in range(n)]
    text = [CAPTIONS[i % 5] for i in range(n)]
    w = pa.array([SIZES[i % 5][0] for i in range(n)], pa.int64())
    h = pa.array([SIZES[i % 5][1] for i in range(n)], pa.int64())
    score = lambda: pa.array(rng.uniform(0.05, 0.45, n).astype(np.float32))  # noqa: E731
    prob = lambda: pa.array(rng.uniform(0.0, 1.0, n))  # noqa: E731
    if kind == "laion2b":
        return pa.table({"URL": url, "TEXT": text, "WIDTH": w, "HEIGHT": h, "similarity": score(),
                         "hash": pa.array(rng.integers(0, 2**62, n)), "punsafe": prob(), "pwatermark": prob()})
    if kind == "laion400m":
        return pa.table({"SAMPLE_ID": pa.array(np.arange(n)), "URL": url, "TEXT": text, "HEIGHT": h, "WIDTH": w,
                         "LICENSE": ["?"] * n, "NSFW": ["UNLIKELY"] * n, "similarity": score()})
    if kind == "datacomp":
        return pa.table({"uid": [f"{seed:08x}{i:024x}" for i in range(n)], "url": url, "text": text,
                         "original_width": w, "original_height": h, "clip_b32_similarity_score": score(),
                         "clip_l14_similarity_score": score(),
                         "face_bboxes": pa.array([[]] * n, pa.list_(pa.list_(pa.float64()))),
                         "sha256": [f"{i:064x}" for i in range(n)]})
    if kind == "coyo":
        return pa.table({"id": pa.array(np.arange(n)), "url": url, "text": text, "width": w, "height": h,
                         "image_phash": ["0" * 16] * n, "clip_similarity_vitb32": score(),
                         "clip_similarity_vitl14": score(), "nsfw_score_opennsfw2": prob(),
                         "watermark_score": prob(), "aesthetic_score_laion_v2": score()})
    if kind == "img2dataset":  # resized to 256 on the short side: the resized size must not be judged
        return pa.table({"key": [f"{i:09d}" for i in range(n)], "url": url, "caption": text,
                         "width": pa.array([256] * n, pa.int64()), "height": pa.array([256] * n, pa.int64()),
                         "original_width": w, "original_height": h, "status": ["success"] * n,
                         "error_message": pa.array([None] * n, pa.string()), "sha256": [f"{i:064x}" for i in range(n)]})
    raise ValueError(kind)


def _write(tmp_path, kind: str, n: int = 40, shards: int = 1):
    folder = tmp_path / kind
    folder.mkdir()
    for s in range(shards):
        pq.write_table(_pool(kind, n, seed=s), folder / f"{s:05d}.parquet")
    return folder


def _run(inp, out, stages, runner="local"):
    cfg = parse_pipeline({"input": str(inp), "stages": stages})
    stats = execute(cfg, str(out), runner=runner, progress=False)
    return stats, pq.read_table(out / "manifest").sort_by("uid"), json.loads((out / "pipeline.json").read_text())


@pytest.mark.parametrize("kind, size_from", [("laion2b", "WIDTH HEIGHT"), ("laion400m", "WIDTH HEIGHT"),
                                             ("datacomp", "original_width original_height"), ("coyo", "width height"),
                                             ("img2dataset", "original_width original_height")])
def test_size_rules_apply_on_each_schema(tmp_path, kind, size_from):
    _, manifest, info = _run(_write(tmp_path, kind), tmp_path / "out", [{"stage": "basic_filter"}])
    assert f"{info['columns']['width']} {info['columns']['height']}" == size_from
    assert info["idle_rules"] == {}
    reasons = manifest.sort_by("url")["reject_reason"].to_pylist()
    urls = manifest.sort_by("url")["url"].to_pylist()
    expected = {0: None, 1: "image_too_small", 2: "aspect_ratio", 3: "caption_too_short", 4: None}
    for u, r in zip(urls, reasons):
        assert r == expected[int(u.rsplit("/", 1)[1].split(".")[0]) % 5], (u, r)
    if kind == "img2dataset":  # the resized size is kept beside, under its own name
        assert read_shard(list_shards(str(tmp_path / kind))[0])["resized_width"].to_pylist()[0] == 256


@pytest.mark.parametrize("kind, terms", [
    ("laion2b", {"punsafe < 0.3": lambda r: r["punsafe"] < 0.3, "pwatermark < 0.5": lambda r: r["pwatermark"] < 0.5}),
    ("coyo", {"watermark_score < 0.5": lambda r: r["watermark_score"] < 0.5,
              "clip_similarity_vitl14 >= 0.25": lambda r: r["clip_similarity_vitl14"] >= 0.25}),
])
def test_scores_of_the_pool_are_filterable(tmp_path, kind, terms):
    inp = _write(tmp_path, kind, n=60)
    _, manifest, _ = _run(inp, tmp_path / "out", [{"stage": "filter", "keep_where": " and ".join(terms)}])
    want = {}
    for row in pq.read_table(inp).to_pylist():
        failed = [t for t, holds in terms.items() if not holds(row)]
        want[row.get("url") or row["URL"]] = f"filter:{failed[0]}" if failed else None
    got = dict(zip(manifest["url"].to_pylist(), manifest["reject_reason"].to_pylist()))
    assert got == want and 0 < list(got.values()).count(None) < 60


DATACOMP_BASIC_L14 = [{"stage": "basic_filter"},
                      {"stage": "filter", "keep_top": {"column": "clip_l14_similarity_score", "fraction": 0.3}}]


def test_the_example_is_this_pipeline():
    from tests.conftest import REPO
    from winnow.pipeline.config import load_pipeline

    stages = load_pipeline(str(REPO / "examples" / "datacomp-metadata.yaml")).build_stages()
    assert [s.name for s in stages] == ["basic_filter", "filter"]
    assert (stages[1].top_column, stages[1].top_fraction) == ("clip_l14_similarity_score", 0.3)


def _expected_top(inp, fraction: float) -> set[str]:
    raw = pa.concat_tables([pq.read_table(p) for p in sorted(inp.glob("*.parquet"))])
    survivors = [(s, u) for i, (s, u) in enumerate(zip(raw["clip_l14_similarity_score"].to_pylist(),
                                                      raw["uid"].to_pylist())) if _basic_survives(i % 50)]
    k = math.ceil(fraction * len(survivors))
    return {u for _, u in sorted(survivors, reverse=True)[:k]}


@pytest.mark.ray
def test_datacomp_basic_and_l14_top_30_on_metadata_alone_both_runners(tmp_path, ray_local):
    inp = _write(tmp_path, "datacomp", n=50, shards=2)
    runs = {r: _run(inp, tmp_path / r, DATACOMP_BASIC_L14, runner=r) for r in ("local", "ray")}
    stats, manifest, info = runs["local"]
    kept = set(manifest.filter(manifest["reject_stage"].is_null())["uid"].to_pylist())
    assert kept == _expected_top(inp, 0.3) and len(kept) == math.ceil(0.3 * 40)  # 40 of 100 survive basic
    assert stats["stages"]["filter"]["rejected"] == {"below_keep_top:clip_l14_similarity_score": 40 - 12}
    assert info["columns"]["width"] == "original_width" and info["columns"]["uid"] == "uid"
    ray_manifest = runs["ray"][1]
    for col in ("uid", "reject_stage", "reject_reason"):
        assert ray_manifest[col].to_pylist() == manifest[col].to_pylist()


def test_a_previous_runs_manifest_is_rethresholded(tmp_path):
    inp = _write(tmp_path, "datacomp", n=50, shards=2)
    _run(inp, tmp_path / "first", DATACOMP_BASIC_L14)
    # the first run's decisions come back as input_reject_stage/_reason: re-cut among basic's survivors
    again = [{"stage": "filter", "keep_where": "input_reject_stage is null or input_reject_stage = 'filter'",
              "keep_top": {"column": "clip_l14_similarity_score", "fraction": 0.1}}]
    stats, manifest, _ = _run(tmp_path / "first" / "manifest", tmp_path / "second", again)
    kept = set(manifest.filter(manifest["reject_stage"].is_null())["uid"].to_pylist())
    assert kept == _expected_top(inp, 0.1) and len(kept) == math.ceil(0.1 * 40)
    assert stats["rows_in"] == 100 and manifest.num_rows == 100  # every row of the old manifest, once
    assert set(manifest["input_reject_reason"].drop_null().to_pylist()) >= {"image_too_small", "aspect_ratio"}


def test_a_rule_with_no_column_is_reported(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": [CAPTIONS[0]]}), folder / "00000.parquet")
    proc = winnow("stage", "basic_filter", "--input", folder, "--output", tmp_path / "out", "--quiet", check=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("winnow: columns:")]
    assert len(line) == 1 and "url<-url" in line[0] and "uid<-(derived)" in line[0]
    assert "basic_filter min_side: needs an image or width and height columns" in line[0]
    info = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert info["idle_rules"]["basic_filter"] == [f"{r}: needs an image or width and height columns"
                                                  for r in ("min_side", "max_aspect_ratio", "max_pixels")]


@pytest.mark.torture
def test_a_filter_on_a_missing_column_fails_before_running(tmp_path):
    inp = _write(tmp_path, "datacomp")
    proc = winnow("stage", "filter", "--input", inp, "--output", tmp_path / "out", "--set",
                  "keep_where=punsafe < 0.1")
    assert_one_line_error(proc, "stage 'filter' needs column 'punsafe'", str(inp))
    assert not (tmp_path / "out" / "manifest").exists()
    proc = winnow("stage", "filter", "--input", inp, "--output", tmp_path / "out2", "--set",
                  "keep_top={column: clip_l14, fraction: 0.3}")
    assert_one_line_error(proc, "needs column 'clip_l14'")
