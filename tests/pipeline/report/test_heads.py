"""The report's embedding-head section, on real runs with heads on the tiny CLIP, opened in headless Chromium:
one histogram per head column with the threshold the run applied (and none where it applied none), and
the highest/lowest scored kept and rejected rows of the whole run, in score order, with their images."""
from __future__ import annotations

import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.pipeline.report.chromium_cdp import Browser, find_chromium, problems
from tests.stages.filter.test_heads import STATES
from tests.tiny_clip import tiny_checkpoint
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.report.artifacts import predicate_cuts
from winnow.pipeline.report.build import write_report
from winnow.pipeline.run import execute

PER_GRID = 5
HEAD_FACTS = """(() => {
  const q = (sel, root) => [...(root || document).querySelectorAll(sel)];
  return {
    heads: q('.head').map(d => ({column: d.dataset.column,
      thresholds: q('line.threshold', d).map(l => Number(l.dataset.value)),
      n: Number((d.querySelector('.hist') || {dataset: {n: -1}}).dataset.n),
      grids: q('.grid', d).map(g => ({side: g.dataset.side, order: g.dataset.order,
        uids: q('figure', g).map(f => f.dataset.uid), scores: q('figure', g).map(f => Number(f.dataset.score)),
        images: q('figure img', g).filter(i => i.complete && i.naturalWidth > 0).length}))})),
    histograms: q('svg[data-chart=histogram]').map(s => s.dataset.column),
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed: run tests/pipeline/report/install_chromium.sh")
    b = Browser(binary)
    yield b
    b.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dir):
    """Run 1: clip_score (keep_top 0.8) with two heads in the engine, writing embeddings. Run 2: the same
    pool through score_embeddings over run 1's embeddings, then `filter` on the aesthetic head's median."""
    d = tmp_path_factory.mktemp("head_runs")
    tiny = tiny_checkpoint(d / "tiny.pt")
    heads = {}
    for col, kind in (("aesthetic", "aesthetic-v2"), ("nsfw", "nsfw-laion")):
        torch.save(STATES[kind](64, seed=11), d / f"{kind}.pth")
        heads[col] = f"head:{kind}@{d / f'{kind}.pth'};model={tiny}"
    cfg = parse_pipeline({"input": str(sample_dir), "write_kept": True, "stages": [
        {"stage": "clip_score", "model": tiny, "device": "cpu", "keep_top": 0.8, "embeddings_dir": "emb",
         "heads": heads}]})
    execute(cfg, str(d / "engine"), progress=False)
    cut = float(np.median(pq.read_table(d / "engine" / "manifest")["aesthetic"].drop_null().to_numpy()))
    cfg = parse_pipeline({"input": str(sample_dir), "write_kept": True, "stages": [
        {"stage": "score_embeddings", "embeddings": str(d / "engine" / "emb"), "heads": heads},
        {"stage": "filter", "keep_where": f"aesthetic >= {cut!r} and nsfw <= 1"}]})
    execute(cfg, str(d / "cached"), progress=False)
    return d / "engine", d / "cached", cut


def expected(run: pathlib.Path, column: str) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """The grids written out from the whole manifest: (side, order) -> [(score, uid)]."""
    rows = [r for r in pq.read_table(run / "manifest").to_pylist() if r[column] is not None]
    out = {}
    for side in ("kept", "rejected"):
        mine = [(float(r[column]), r["uid"]) for r in rows if (r["reject_stage"] is None) == (side == "kept")]
        out[(side, "highest")] = sorted(mine, key=lambda e: (-e[0], e[1]))[:PER_GRID]
        out[(side, "lowest")] = sorted(mine, key=lambda e: (e[0], e[1]))[:PER_GRID]
    return out


def _page(browser, run: pathlib.Path) -> dict:
    path = write_report(str(run), per_grid=PER_GRID)
    page = browser.open(pathlib.Path(path).resolve().as_uri(), HEAD_FACTS)
    assert page["exception"] is None and problems(page) == []
    return page["value"]


def _check_grids(facts: dict, run: pathlib.Path, column: str) -> dict:
    head = next(h for h in facts["heads"] if h["column"] == column)
    manifest = pq.read_table(run / "manifest")
    assert head["n"] == len(manifest) - manifest[column].null_count
    want = expected(run, column)
    got = {(g["side"], g["order"]): g for g in head["grids"]}
    assert set(got) == set(want) and all(len(w) == PER_GRID for w in want.values())
    for key, rows in want.items():
        assert list(zip(got[key]["scores"], got[key]["uids"])) == rows, key
        assert got[key]["images"] == PER_GRID, key  # every shown row's image was found and decodes
    return head


def test_head_section_from_in_engine_heads(runs, browser):
    engine, _, _ = runs
    facts = _page(browser, engine)
    assert [h["column"] for h in facts["heads"]] == ["aesthetic", "nsfw"]
    for col in ("aesthetic", "nsfw"):
        head = _check_grids(facts, engine, col)
        assert head["thresholds"] == []  # clip_score's keep_top is a cut on clip_score, not on a head
        assert facts["histograms"].count(col) == 1  # in the head section, not again under score distributions
    assert "clip_score" in facts["histograms"]


def test_head_section_draws_the_filter_threshold(runs, browser):
    _, cached, cut = runs
    facts = _page(browser, cached)
    head = _check_grids(facts, cached, "aesthetic")
    assert head["thresholds"] == [cut]
    grids = {(g["side"], g["order"]): g["scores"] for g in head["grids"]}
    assert min(grids[("kept", "lowest")]) >= cut > max(grids[("rejected", "highest")])
    nsfw = _check_grids(facts, cached, "nsfw")
    assert nsfw["thresholds"] == [1.0]


def test_predicate_cuts_take_only_plain_top_level_comparisons():
    assert predicate_cuts("aesthetic >= 5 and 0.1 > nsfw and (a < 1 or b > 2) and not c < 3 and lang = 'en'") == [
        ("aesthetic", "keep_where (>=)", 5.0), ("nsfw", "keep_where (<)", 0.1)]
    assert predicate_cuts("a < 1 or a > 2") == [] and predicate_cuts("a <") == [] and predicate_cuts(None) == []
