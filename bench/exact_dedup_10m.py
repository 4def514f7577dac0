"""Exact dedup (normalized URL, then sha256 of image bytes) of 10M rows through the local runner.

Reports wall time per step and the peak RSS of the process (the bar: bounded memory on this 24 GiB,
2-core machine). Reference measured in the same run on the same rows: pyarrow's in-memory
``Table.group_by(key).aggregate(min uid)`` on the raw URL strings — the usual one-liner, which neither
normalises URLs nor says which row each duplicate duplicates.

Data: synthetic rows (uid, url, 48-byte "image" blob) in 20 Parquet shards; 30% of URLs are variants
of 10% of pages (scheme, www., utm_ parameters, fragment) and 15% of blobs repeat an earlier one.
Run: `python -m bench.exact_dedup_10m [--rows N] [--keep DIR]`.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_shard(rng: np.random.Generator, start: int, n: int, total: int) -> pa.Table:
    ids = np.arange(start, start + n)
    # a variant of an earlier URL for 25% of rows (same page id), a fresh one otherwise
    page = np.where(rng.random(n) < 0.3, rng.integers(0, max(1, total // 10), n), ids + total)
    style = rng.integers(0, 4, n)
    hosts = np.array(["img.example.com", "www.img.example.com", "cdn.pics.net", "www.cdn.pics.net"])
    host = hosts[(page % 2) * 2 + (style % 2)]
    scheme = np.where(style < 2, "http://", "https://")
    tail = np.where(style == 3, "?utm_source=feed#top", "")
    urls = [f"{s}{h}/p/{p}.jpg{t}" for s, h, p, t in zip(scheme, host, page.tolist(), tail)]
    blob_id = np.where(rng.random(n) < 0.15, rng.integers(0, max(1, total // 10), n), ids + total)
    blobs = [int(b).to_bytes(8, "little") * 6 for b in blob_id]
    return pa.table({"uid": [f"r{i:09d}" for i in ids.tolist()], "url": urls,
                     "image": pa.array(blobs, pa.binary())})


def write_input(path: str, rows: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for k in range(shards):
        pq.write_table(make_shard(rng, int(bounds[k]), int(bounds[k + 1] - bounds[k]), rows),
                       os.path.join(path, f"part-{k:03d}.parquet"))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="winnow-exact-")
    src, out = os.path.join(work, "in"), os.path.join(work, "out")
    os.makedirs(src, exist_ok=True)
    t0 = time.perf_counter()
    if not os.listdir(src):
        write_input(src, args.rows, args.shards)
    print(f"input: {args.rows:,} rows in {args.shards} shards ({time.perf_counter() - t0:.0f}s to generate)")
    rss_before = peak_rss_gib()

    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute

    shutil.rmtree(out, ignore_errors=True)
    cfg = parse_pipeline({"input": src, "write_kept": False,
                          "stages": [{"stage": "dedup_url"}, {"stage": "dedup_image"}]})
    t0, c0 = time.perf_counter(), cpu_seconds()
    stats = execute(cfg, out, progress=False)
    ours, ours_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rss = peak_rss_gib()
    for name, st in stats["stages"].items():
        print(f"  {name:<12} in {st['rows_in']:>11,}  rejected {st['rejected']}  {st['seconds']:.0f}s")
    print(f"ours: {ours:.0f}s end to end ({args.rows / ours:,.0f} rows/s; {ours_cpu:.0f} CPU-s), "
          f"peak RSS {rss:.2f} GiB "
          f"(before the run: {rss_before:.2f} GiB)")

    t0, c0 = time.perf_counter(), cpu_seconds()
    table = pq.read_table(src, columns=["uid", "url"])
    survivors = table.group_by("url").aggregate([("uid", "min")])
    ref, ref_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"reference pyarrow group_by(raw url).min(uid), in memory: {ref:.0f}s ({ref_cpu:.0f} CPU-s), "
          f"{survivors.num_rows:,} distinct "
          f"raw URLs vs ours {stats['stages']['dedup_url']['kept']:,} after normalisation; "
          f"peak RSS now {peak_rss_gib():.2f} GiB")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
