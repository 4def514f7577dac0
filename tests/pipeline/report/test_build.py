"""`winnow report`: the page opened in real headless Chromium, plus the numbers behind it.

Chromium comes from Debian (tests/pipeline/report/install_chromium.sh); without it the browser tests skip
with that hint and the rest still run.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipeline.report import report_runs
from tests.pipeline.report.chromium_cdp import Browser, find_chromium, problems
from winnow.pipeline import cli
from winnow.pipeline.report.artifacts import metaclip_curves
from winnow.pipeline.report.build import write_report
from winnow.pipeline.report.scan import KEPT_KEY, ManifestScanner, column_ranges, histogram_edges
from winnow.stages.errors import WinnowError

PAGE_FACTS = """(() => {
  const num = el => el ? Number(el.textContent.replace(/,/g, '')) : null;
  const q = (sel, root) => [...(root || document).querySelectorAll(sel)];
  return {
    summary: {rows_in: num(document.getElementById('rows-in')), rows_kept: num(document.getElementById('rows-kept'))},
    stages: q('#funnel-table tr.stage').map(tr => ({name: tr.dataset.stage, rows_in: num(tr.querySelector('.rows-in')),
      kept: num(tr.querySelector('.kept')), rejected: num(tr.querySelector('.rejected')),
      data: [Number(tr.dataset.rowsIn), Number(tr.dataset.kept), Number(tr.dataset.rejected)]})),
    reasons: q('#funnel-table tr.reason').map(tr => [tr.dataset.stage, tr.dataset.reason,
                                                     num(tr.querySelector('.count'))]),
    charts: q('svg.chart').map(s => ({chart: s.dataset.chart, column: s.dataset.column || null,
      width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height,
      marks: s.querySelectorAll('rect, polyline, circle').length})),
    thresholds: q('line.threshold').map(l => [l.closest('svg').dataset.column, Number(l.dataset.value)]),
    images: q('img').map(i => ({data: i.src.startsWith('data:image/jpeg;base64,'),
                                ok: i.complete && i.naturalWidth > 0})),
    grids: q('.grid').map(g => ({grid: g.dataset.grid, stage: g.dataset.stage || '', reason: g.dataset.reason || '',
      uids: q('figure', g).map(f => f.dataset.uid),
      synthetic: q('figure', g).map(f => (f.querySelector('.synthetic') || {}).textContent || null)})),
    strips: q('.strip').map(s => ({survivor: s.dataset.survivor, n: Number(s.dataset.duplicates),
      uids: q('figure', s).map(f => f.dataset.uid)})),
    balance: q('.balance').map(b => [b.dataset.group, b.querySelector('.balance-summary').textContent]),
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed: run tests/pipeline/report/install_chromium.sh "
                    "(apt-get install -y chromium)")
    b = Browser(binary)
    yield b
    b.close()


@pytest.fixture(scope="module")
def basic(sample_dir, tmp_path_factory) -> pathlib.Path:
    return report_runs.basic_run(sample_dir, tmp_path_factory.mktemp("basic_run"))


@pytest.fixture(scope="module")
def full(sample_dir, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("full_run")
    return out, report_runs.full_run(sample_dir, out)


def _open(browser, path: str, tmp: pathlib.Path) -> dict:
    result = browser.open(pathlib.Path(path).resolve().as_uri(), PAGE_FACTS)
    assert result["exception"] is None, result["exception"]
    shot = tmp / "screenshot.png"
    shot.write_bytes(result["screenshot"])
    _check_screenshot(result["screenshot"])
    return result


def _check_screenshot(png: bytes) -> None:
    from PIL import Image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.width == 1280 and im.height > 1200, im.size
    assert im.getpixel((8, 8))[2] < 80, "the dark header is missing: CSS not applied"
    colors = im.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 500, "screenshot looks blank"


def _manifest(run: pathlib.Path) -> dict[str, dict]:
    rows = pq.read_table(run / "manifest").to_pylist()
    return {r["uid"]: r for r in rows}


def test_real_run_page_in_chromium(basic, browser, tmp_path, capsys):
    assert cli.main(["report", str(basic)]) == 0
    assert f"report: {basic / 'report.html'}" in capsys.readouterr().out
    page = _open(browser, str(basic / "report.html"), tmp_path)
    assert problems(page) == []
    facts, stats = page["value"], json.loads((basic / "stats.json").read_text())

    assert facts["summary"] == {"rows_in": stats["rows_in"], "rows_kept": stats["rows_kept"]}
    assert [s["name"] for s in facts["stages"]] == list(stats["stages"])
    for shown in facts["stages"]:
        st = stats["stages"][shown["name"]]
        want = [st["rows_in"], st["kept"], sum(st["rejected"].values())]
        assert [shown["rows_in"], shown["kept"], shown["rejected"]] == want == shown["data"]
    assert sorted(map(tuple, facts["reasons"])) == sorted(
        (n, r, c) for n, st in stats["stages"].items() for r, c in st["rejected"].items())

    charts = {(c["chart"], c["column"]): c for c in facts["charts"]}
    assert charts[("funnel", None)]["marks"] >= 2 and charts[("histogram", "lang_score")]["marks"] > 5
    assert all(c["width"] > 300 and c["height"] > 50 for c in facts["charts"])
    assert ["lang_score", 0.3] in facts["thresholds"]  # basic_filter's configured min_lang_score

    assert facts["images"] and all(i["data"] and i["ok"] for i in facts["images"])
    # rejected rows' images too, though the run's checkpoints hold no bytes: read from the input by reference
    html = (basic / "report.html").read_text()
    assert "image not found in run dir" not in html and "no image bytes" not in html
    manifest = _manifest(basic)
    kept_grid = [g for g in facts["grids"] if g["grid"] == "kept"]
    assert len(kept_grid) == 1 and len(kept_grid[0]["uids"]) == min(24, stats["rows_kept"])
    assert all(manifest[u]["reject_stage"] is None for u in kept_grid[0]["uids"])
    rejected = {(g["stage"], g["reason"]): g["uids"] for g in facts["grids"] if g["grid"] == "rejected"}
    # All 4 shards are sampled, so every reason has a grid of min(per_grid, count) rows, each with that reason.
    assert {k: len(v) for k, v in rejected.items()} == {
        (n, r): min(12, c) for n, st in stats["stages"].items() for r, c in st["rejected"].items()}
    for (stage, reason), uids in rejected.items():
        assert all((manifest[u]["reject_stage"], manifest[u]["reject_reason"]) == (stage, reason) for u in uids)


def test_full_pipeline_sections_in_chromium(full, browser, tmp_path):
    run, info = full
    write_report(str(run), per_grid=5)
    page = _open(browser, str(run / "report.html"), tmp_path)
    assert problems(page) == []
    facts, stats = page["value"], json.loads((run / "stats.json").read_text())
    assert [[s["rows_in"], s["kept"], s["rejected"]] for s in facts["stages"]] == [
        [st["rows_in"], st["kept"], sum(st["rejected"].values())] for st in stats["stages"].values()]
    assert facts["thresholds"] == [["clip_score", pytest.approx(info["threshold"], abs=1e-12)]]

    counts, t = info["counts"], report_runs.METACLIP_T
    assert any(c["chart"] == "metaclip" and c["marks"] >= 2 for c in facts["charts"])
    [(group, balance)] = facts["balance"]
    assert group == "all" and "counts from artifacts/metaclip.json" in balance
    assert f"{int((counts > 0).sum()):,} entries matched" in balance
    assert f"{int((counts >= t).sum()):,} head entries flattened to t" in balance
    assert f"expected matches after balancing {int(np.minimum(counts, t).sum()):,}" in balance

    rows = {r["uid"]: r for r in info["rows"]}
    dup_sizes = {}
    for r in info["rows"]:
        if r["dup_of"]:
            dup_sizes[r["dup_of"]] = dup_sizes.get(r["dup_of"], 0) + 1
    assert facts["strips"] and len(facts["strips"]) == min(10, len(dup_sizes))
    for strip in facts["strips"]:
        survivor, *members = strip["uids"]
        assert survivor == strip["survivor"] and strip["n"] == dup_sizes[survivor]
        assert members and all(rows[m]["dup_of"] == survivor for m in members)

    kept = next(g for g in facts["grids"] if g["grid"] == "kept")
    assert 0 < len(kept["uids"]) <= 10
    assert kept["synthetic"] == ["synthetic" + rows[u]["caption_synthetic"] for u in kept["uids"]]
    assert all(0 < len(g["uids"]) <= 5 for g in facts["grids"] if g["grid"] == "rejected")
    assert facts["images"] and all(i["data"] and i["ok"] for i in facts["images"])


def test_console_errors_are_detected(browser):
    """The no-console-errors check above can fail: a page that logs and loads badly is caught."""
    bad = ("data:text/html,<img src='data:image/jpeg;base64,AAAA'><script>console.error('boom');"
           "undefined_function()</script>")
    found = problems(browser.open(bad))
    assert any("boom" in p for p in found) and any("exception" in p for p in found)


def test_streamed_histograms_and_samples_match_a_full_read(full):
    run, info = full
    files = [(p.stem.removeprefix("part-"), str(p)) for p in sorted((run / "manifest").glob("*.parquet"))]
    table = pq.read_table(run / "manifest")
    scores = table["clip_score"].to_numpy(zero_copy_only=False).astype(float)
    ok = ~np.isnan(scores)
    assert column_ranges([p for _, p in files], ["clip_score"])["clip_score"] == (
        pytest.approx(np.nanmin(scores)), pytest.approx(np.nanmax(scores)))
    edges = histogram_edges(float(np.nanmin(scores)), float(np.nanmax(scores)), [info["threshold"]], bins=17)
    scanner = ManifestScanner(per_grid=3, dup_groups=4, dup_members=2, seed=5, histograms={"clip_score": edges},
                              entry_groups=[None])
    scanner.batch_rows = 23  # many batches per file: accumulation across batches and files
    result = scanner.scan(files, {files[1][0], files[3][0]})
    kept = table["reject_stage"].is_null().to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(result.histograms["clip_score"].kept, np.histogram(scores[ok & kept], edges)[0])
    np.testing.assert_array_equal(result.histograms["clip_score"].rejected, np.histogram(scores[ok & ~kept], edges)[0])
    np.testing.assert_array_equal(result.entry_counts[None][: len(info["counts"])], info["counts"])

    sampled = pq.read_table(files[1][1]).to_pylist() + pq.read_table(files[3][1]).to_pylist()
    keys = {(r["reject_stage"] or "", r["reject_reason"] or "kept") for r in sampled}
    assert set(result.samples) == keys
    for key, rows in result.samples.items():
        pool = {r["uid"] for r in sampled if (r["reject_stage"] or "", r["reject_reason"] or "kept") == key}
        assert len(rows) == min(6 if key == KEPT_KEY else 3, len(pool))
        assert {r["uid"] for r in rows} <= pool
    assert len(result.dup_groups) == 4
    assert all(len(g["members"]) == min(2, g["n"]) for g in result.dup_groups.values())
    again = ManifestScanner(3, 4, 2, 5, {"clip_score": edges}, [None])
    again.batch_rows = 23
    same = again.scan(files, {files[1][0], files[3][0]})
    assert {k: [r["uid"] for r in v] for k, v in same.samples.items()} == {
        k: [r["uid"] for r in v] for k, v in result.samples.items()}


def test_metaclip_counts_from_artifact_sidecar_or_manifest(full, tmp_path):
    run, info = full
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    pipeline = json.loads((copy / "pipeline.json").read_text())
    [curve] = metaclip_curves(str(copy), pipeline)
    assert (curve["group"], curve["t"], curve["source"]) == ("all", report_runs.METACLIP_T, "artifacts/metaclip.json")
    np.testing.assert_array_equal(curve["counts"], info["counts"])

    # Per-language groups (MetaCLIP 2): each its own entry space and t, the most matched first.
    art = json.loads((copy / "artifacts" / "metaclip.json").read_text())
    art["groups"]["de"] = {"n_entries": 5, "t": 2.0, "entry_ids": [1, 4], "counts": [3, 1]}
    art["thresholds"]["de"] = 2.0
    (copy / "artifacts" / "metaclip.json").write_text(json.dumps(art))
    curves = metaclip_curves(str(copy), pipeline)
    assert [(c["group"], c["t"]) for c in curves] == [("all", report_runs.METACLIP_T), ("de", 2.0)]
    np.testing.assert_array_equal(curves[1]["counts"], [0, 3, 0, 0, 1])

    # The stage's sidecar: every entry with its count, rows in any order.
    (copy / "artifacts" / "metaclip.json").write_text(json.dumps({"t": 4.0, "thresholds": {"all": 4.0}}))
    order = np.random.default_rng(1).permutation(len(info["counts"]))
    pq.write_table(pa.table({"group": ["all"] * len(order), "entry_id": pa.array(order, pa.int32()),
                             "count": pa.array(info["counts"][order])}),
                   copy / "artifacts" / "metaclip.entries.parquet")
    [curve] = metaclip_curves(str(copy), pipeline)
    assert (curve["group"], curve["t"], curve["source"]) == ("all", 4.0, "artifacts/metaclip.entries.parquet")
    np.testing.assert_array_equal(curve["counts"], info["counts"])

    for name in ("metaclip.json", "metaclip.entries.parquet"):
        os.remove(copy / "artifacts" / name)
    assert metaclip_curves(str(copy), pipeline) == []
    html = (pathlib.Path(write_report(str(copy)))).read_text()
    assert "counts from manifest column metaclip_entries" in html
    assert f"{int((info['counts'] > 0).sum()):,} entries matched" in html
    assert f"t = {report_runs.METACLIP_T}: " in html  # from the stage's configured t


def test_sections_appear_only_with_their_data(basic, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(basic / "stats.json", bare / "stats.json")
    html = pathlib.Path(write_report(str(bare))).read_text()
    assert 'data-chart="funnel"' in html and 'id="scores"' not in html and "<img" not in html

    no_work = tmp_path / "no_work"
    shutil.copytree(basic, no_work, ignore=shutil.ignore_patterns("work", "report.html"))
    html = pathlib.Path(write_report(str(no_work))).read_text()
    assert 'data-grid="kept"' in html and "<img" in html  # kept images come from kept/
    # rejected rows' bytes were never in the run (checkpoints hold none): read from the input by reference
    assert 'data-grid="rejected"' in html and "image not found in run dir" not in html
    record = json.loads((no_work / "pipeline.json").read_text())
    for entry in record["inputs"]:  # the input moved away since the run: nothing to show for those rows
        entry["path"] = str(tmp_path / "moved" / os.path.basename(entry["path"]))
    (no_work / "pipeline.json").write_text(json.dumps(record))
    html = pathlib.Path(write_report(str(no_work))).read_text()
    assert "<img" in html and "image not found in run dir" in html

    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("winnow: error: run directory") and "stats.json: not found" in err[1]
    (bare / "manifest").mkdir()
    (bare / "manifest" / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(WinnowError, match=r"part-00000.parquet: not a readable Parquet file"):
        write_report(str(bare))
    with pytest.raises(WinnowError, match="missing key 'stages'"):
        (bare / "stats.json").write_text(json.dumps({"rows_in": 1, "rows_kept": 1}))
        write_report(str(bare))


def test_odd_manifests_float16_nan_empty_files(tmp_path):
    run = tmp_path / "odd"
    (run / "manifest").mkdir(parents=True)
    table = pa.table({"uid": ["a", "b", "c"], "caption": ["x", None, "z"], "reject_stage": [None, "s", "s"],
                      "reject_reason": [None, "r1", "r2"], "half": pa.array(np.array([0.1, 0.5, 0.9], np.float16)),
                      "all_nan": pa.array([float("nan")] * 3, pa.float32()), "all_null": pa.nulls(3, pa.float64())})
    pq.write_table(table, run / "manifest" / "part-00000.parquet")
    pq.write_table(table.slice(0, 0), run / "manifest" / "part-00001.parquet")
    (run / "stats.json").write_text(json.dumps({"rows_in": 3, "rows_kept": 1, "stages": {
        "s": {"rows_in": 3, "kept": 1, "rejected": {"r1": 1, "r2": 1}}}}))
    html = pathlib.Path(write_report(str(run))).read_text()
    assert 'data-column="half" data-n="3"' in html  # float16 statistics are bytes: read the column instead
    assert 'data-column="all_nan"' not in html and 'data-column="all_null"' not in html
    assert html.count("<figure") == 3 and html.count("image not found in run dir") == 3


def test_winnow_run_writes_the_report(sample_dir, tmp_path, capsys):
    yaml_path = tmp_path / "p.yaml"
    out = tmp_path / "out"
    yaml_path.write_text(f"input: {sample_dir}\noutput: {out}\nstages:\n  - stage: basic_filter\n")
    assert cli.main(["run", str(yaml_path), "--runner", "local", "--quiet"]) == 0
    assert (out / "report.html").exists() and f"report: {out / 'report.html'}" in capsys.readouterr().out
