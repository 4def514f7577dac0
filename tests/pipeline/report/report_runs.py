"""Run directories for the report tests.

``basic_run`` is a real run (``winnow sample`` pool through basic_filter with the local runner).
``full_run`` writes by hand what a dedup -> clip -> metaclip -> recaption pipeline leaves in OUT/,
from the same pool and its ground truth, because those stages are built elsewhere: duplicates from
the planted ones, CLIP-like scores with a keep-top threshold, MetaCLIP-style entry matches with
balancing by min(1, t/count), and synthetic captions on kept rows. Its stats are counted from the
rows it writes, so the funnel must match them exactly.
"""
from __future__ import annotations

import json
import os
import pathlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.pipeline.outputs import kept_view, manifest_view
from winnow.pipeline.rundir import write_parquet_atomic

N_ENTRIES = 300
METACLIP_T = 6


def basic_run(pool: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute

    cfg = parse_pipeline({"input": str(pool), "output": str(out), "write_kept": True,
                          "stages": [{"stage": "basic_filter", "min_lang_score": 0.3}]})
    execute(cfg, str(out), runner="local", progress=False)
    return out


def full_run(pool: pathlib.Path, out: pathlib.Path, seed: int = 0) -> dict:
    """Write the run; returns what the test checks against (threshold, counts, dup pairs)."""
    rng = np.random.default_rng(seed)
    truth = {r["uid"]: r for r in pq.read_table(pool / "ground_truth" / "ground_truth.parquet").to_pylist()}
    shards = [(f"{k:05d}", pq.read_table(p)) for k, p in enumerate(sorted(pool.glob("shard-*.parquet")))]
    rows = [(stem, r) for stem, t in shards for r in t.to_pylist()]
    stats = {n: {"rows_in": 0, "kept": 0, "rejected": Counter(), "seconds": 0.01}
             for n in ("dedup", "clip", "metaclip", "recaption")}

    def reject(r, stage, reason):
        r["reject_stage"], r["reject_reason"] = stage, reason
        stats[stage]["rejected"][reason] += 1

    def live():
        return [r for _, r in rows if r["reject_stage"] is None]

    for _, r in rows:
        r.update(reject_stage=None, reject_reason=None, dup_of=None, clip_score=None, metaclip_entries=None,
                 caption_synthetic=None)
    for r in live():
        t = truth[r["uid"]]
        if t["dup_of"] and t["problem"] in ("exact_duplicate", "near_duplicate"):
            r["dup_of"] = t["dup_of"]
            reject(r, "dedup", "dup:sha256" if t["problem"] == "exact_duplicate" else "dup:phash")
    scores = rng.normal(0.30, 0.05, len(live()))
    threshold = float(np.quantile(scores, 0.3))
    for r, s in zip(live(), scores):
        r["clip_score"] = float(s)
        if s < threshold:
            reject(r, "clip", "clip:below_threshold")
    for r in live():
        k = int(rng.integers(0, 4))
        r["metaclip_entries"] = sorted({int(e) for e in np.minimum(rng.zipf(1.4, k) - 1, N_ENTRIES - 1)})
    counts = np.bincount([e for r in live() for e in r["metaclip_entries"]], minlength=N_ENTRIES)
    for r in live():
        p = [min(1.0, METACLIP_T / counts[e]) for e in r["metaclip_entries"]]
        if not p:
            reject(r, "metaclip", "metaclip:no_match")
        elif rng.random() >= 1 - np.prod([1 - q for q in p]):
            reject(r, "metaclip", "metaclip:balanced_out")
    for r in live():
        r["caption_synthetic"] = f"a synthetic caption for {r['uid']}, written by a tiny model"
    _write(out, shards, rows, stats, threshold, counts)
    return {"threshold": threshold, "counts": counts, "rows": [r for _, r in rows]}


def _write(out: pathlib.Path, shards, rows, stats, threshold, counts) -> None:
    schema = pa.schema([("uid", pa.string()), ("caption", pa.string()), ("image", pa.binary()),
                        ("reject_stage", pa.string()), ("reject_reason", pa.string()), ("dup_of", pa.string()),
                        ("clip_score", pa.float32()), ("metaclip_entries", pa.list_(pa.int32())),
                        ("caption_synthetic", pa.string())])
    for stem, _ in shards:
        table = pa.Table.from_pylist([r for s, r in rows if s == stem], schema=schema)
        write_parquet_atomic(table, str(out / "work" / "seg-0" / f"part-{stem}.parquet"))
        write_parquet_atomic(manifest_view(table), str(out / "manifest" / f"part-{stem}.parquet"))
        write_parquet_atomic(kept_view(table), str(out / "kept" / f"part-{stem}.parquet"))
    n_live = len(rows)
    for st in stats.values():  # stages in order: each sees the rows the previous one kept
        st["rows_in"] = n_live
        st["kept"] = n_live - sum(st["rejected"].values())
        st["rejected"] = dict(sorted(st["rejected"].items()))
        st["rows_per_s"] = round(n_live / st["seconds"], 1)
        n_live = st["kept"]
    (out / "stats.json").write_text(json.dumps({"runner": "local", "seconds": 1.5, "rows_in": len(rows),
                                                "rows_kept": n_live, "stages": stats}))
    stages = [{"stage": "dedup", "name": "dedup"}, {"stage": "clip_score", "name": "clip", "keep_top": 0.7},
              {"stage": "metaclip", "name": "metaclip", "t": METACLIP_T}, {"stage": "recaption", "name": "recaption"}]
    (out / "pipeline.json").write_text(json.dumps({"config": {"stages": stages}, "runner": "local"}))
    os.makedirs(out / "artifacts", exist_ok=True)
    (out / "artifacts" / "clip.json").write_text(json.dumps({"threshold": threshold, "keep_top": 0.7}))
    nz = np.flatnonzero(counts)  # the metaclip stage's artifact: sparse counts per metadata group
    (out / "artifacts" / "metaclip.json").write_text(json.dumps({
        "stage": "metaclip", "t": float(METACLIP_T), "thresholds": {"all": float(METACLIP_T)},
        "groups": {"all": {"n_entries": N_ENTRIES, "t": float(METACLIP_T), "entry_ids": nz.tolist(),
                           "counts": counts[nz].tolist()}}}))
