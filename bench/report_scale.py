"""`winnow report` on a run of millions of rows: wall time, peak memory and page size.

Builds a synthetic run directory (default 2,000,000 rows in 200 shards of 10,000, like img2dataset
shards) with every section's data: basic/dedup/clip/metaclip rejections, two float score columns,
``dup_of``, ``metaclip_entries`` over 50,000 entries, synthetic captions, small JPEGs in work/ and
kept/, and the clip/metaclip artifacts. Then, each in a fresh process:
  ours:      write_report(run)   (one streaming pass + image reads for the sample)
  reference: the notebook way: pq.read_table(manifest) whole, np.histogram per score column and a
             reason count with pandas (no images, no MetaCLIP curve, no dup groups)
Run: `python -m bench.report_scale [--rows N] [--shards K] [--dir PATH]`
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REASONS = [("basic_filter", "caption_too_short"), ("basic_filter", "language:de"), ("basic_filter", "image_too_small"),
           ("dedup", "dup:sha256"), ("dedup", "dup:phash"), ("clip", "clip:below_threshold"),
           ("metaclip", "metaclip:balanced_out"), ("metaclip", "metaclip:no_match")]
SHARES = [0.03, 0.04, 0.03, 0.02, 0.02, 0.25, 0.15, 0.05]  # the rest is kept
ENTRIES = 50_000


def _jpegs(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((48, 48)).save(buf, "JPEG", quality=60)
        out.append(buf.getvalue())
    return out


def build(run: str, rows: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    images = _jpegs(64)
    per = rows // shards
    counts = np.zeros(ENTRIES, np.int64)
    totals: dict = {}
    for k in range(shards):
        n = per if k < shards - 1 else rows - per * (shards - 1)
        uids = np.char.add(f"u{k:05d}-", np.arange(n).astype(str))
        code = rng.choice(len(REASONS) + 1, size=n, p=[*SHARES, 1 - sum(SHARES)])
        stage = np.array([s for s, _ in REASONS] + [None], dtype=object)[code]
        reason = np.array([r for _, r in REASONS] + [None], dtype=object)[code]
        for c, cnt in zip(*np.unique(code, return_counts=True)):
            if c < len(REASONS):
                totals[REASONS[c]] = totals.get(REASONS[c], 0) + int(cnt)
        is_dup = np.isin(code, [3, 4])
        dup_of = np.where(is_dup, np.char.add("u00000-", rng.integers(0, per, n).astype(str)), None)
        n_ent = np.where(code >= 5, rng.integers(0, 4, n), 0)
        values = np.minimum(rng.zipf(1.3, int(n_ent.sum())) - 1, ENTRIES - 1).astype(np.int32)
        counts += np.bincount(values, minlength=ENTRIES)
        entries = pa.ListArray.from_arrays(np.r_[0, np.cumsum(n_ent)].astype(np.int32), values)
        entries = pc_mask(entries, code < 5)
        kept = code == len(REASONS)
        caption = np.char.add("a photo of thing number ", np.arange(n).astype(str))
        table = pa.table({
            "uid": uids, "caption": caption, "reject_stage": stage, "reject_reason": reason,
            "lang_score": rng.beta(8, 2, n).astype(np.float32),
            "clip_score": np.where(code >= 5, rng.normal(0.3, 0.05, n), np.nan).astype(np.float32),
            "dup_of": pa.array(dup_of, pa.string()), "metaclip_entries": entries,
            "caption_synthetic": pa.array(np.where(kept, np.char.add("synthetic ", caption), None), pa.string()),
        })
        stem = f"{k:05d}"
        pq.write_table(table, os.path.join(run, "manifest", f"part-{stem}.parquet"))
        img = pa.array([images[i] for i in rng.integers(0, len(images), n)], pa.binary())
        work = table.select(["uid", "caption", "reject_stage", "reject_reason", "caption_synthetic"])
        work = work.append_column("image", img)
        pq.write_table(work, os.path.join(run, "work", "seg-0", f"part-{stem}.parquet"))
        pq.write_table(work.filter(pa.array(kept)), os.path.join(run, "kept", f"part-{stem}.parquet"))
    _write_json(run, rows, totals, counts)


def pc_mask(arr: pa.Array, null_where: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pa.array(null_where), pa.nulls(len(arr), arr.type), arr)


def _write_json(run: str, rows: int, totals: dict, counts: np.ndarray) -> None:
    stages, live = {}, rows
    for name in ("basic_filter", "dedup", "clip", "metaclip"):
        rej = {r: n for (s, r), n in totals.items() if s == name}
        stages[name] = {"rows_in": live, "kept": live - sum(rej.values()), "rejected": rej, "seconds": 1.0,
                        "rows_per_s": float(live)}
        live -= sum(rej.values())
    with open(os.path.join(run, "stats.json"), "w") as f:
        json.dump({"runner": "ray", "seconds": 100.0, "rows_in": rows, "rows_kept": live, "stages": stages}, f)
    specs = [{"stage": "basic_filter", "name": "basic_filter"}, {"stage": "dedup", "name": "dedup"},
             {"stage": "clip_score", "name": "clip", "keep_top": 0.7}, {"stage": "metaclip", "name": "metaclip"}]
    with open(os.path.join(run, "pipeline.json"), "w") as f:
        json.dump({"config": {"stages": specs}}, f)
    with open(os.path.join(run, "artifacts", "clip.json"), "w") as f:
        json.dump({"threshold": 0.27}, f)
    with open(os.path.join(run, "artifacts", "metaclip.json"), "w") as f:
        nz = np.flatnonzero(counts)  # the metaclip stage's artifact: sparse counts per metadata group
        json.dump({"t": 200.0, "thresholds": {"all": 200.0}, "groups": {"all": {
            "n_entries": ENTRIES, "t": 200.0, "entry_ids": nz.tolist(), "counts": counts[nz].tolist()}}}, f)


OURS = "from winnow.pipeline.report.build import write_report; import sys; write_report(sys.argv[1])"
REFERENCE = """
import sys, numpy as np, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1] + '/manifest')
for c in ('lang_score', 'clip_score'):
    v = t[c].to_numpy(zero_copy_only=False); np.histogram(v[np.isfinite(v)], 40)
t.select(['reject_stage', 'reject_reason']).to_pandas().value_counts()
"""


def timed(code: str, run: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of ``code`` in a fresh Python process (it prints its own ru_maxrss)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", f"import resource, sys\n{code}\n"
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)", run],
                          check=True, stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return time.perf_counter() - t0, int(proc.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--dir", help="run directory to (re)use; default a temporary one")
    args = ap.parse_args()
    run = args.dir or tempfile.mkdtemp(prefix="winnow-report-bench-")
    if not os.path.exists(os.path.join(run, "stats.json")):
        for sub in ("manifest", "work/seg-0", "kept", "artifacts"):
            os.makedirs(os.path.join(run, sub), exist_ok=True)
        t0 = time.perf_counter()
        build(run, args.rows, args.shards)
        print(f"built {args.rows:,} rows in {args.shards} shards at {run} ({time.perf_counter() - t0:.0f} s)")
    ref_s, ref_mb = timed(REFERENCE, run)
    ours_s, ours_mb = timed(OURS, run)
    size = os.path.getsize(os.path.join(run, "report.html")) / 2**20
    print(f"winnow report: {ours_s:.1f} s, peak RSS {ours_mb:,.0f} MiB, report.html {size:.2f} MiB "
          f"(all sections, thumbnails included)")
    print(f"reference (read the whole manifest, 2 histograms + reason counts only): {ref_s:.1f} s, "
          f"peak RSS {ref_mb:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
