"""SemDeDup of 1M x 512 float32 embeddings end to end through the local runner (bar: <= 5 minutes).

Data: 1M unit vectors around 2,000 topic centres (distinct items of a topic: cosine ~0.7), 10% of rows a
near copy (cosine ~0.99) of another row; uid + url input shards and a side dataset of float32
embeddings keyed by uid (as a scorer writes it). Pipeline: semdedup_kmeans (1,000 clusters, 100k
sample, 20 iterations) -> semdedup (eps 0.05). The split (embedding lookup, k-means, assignment,
grouping, within-cluster) is timed by wrapping the stages' methods.
Reference in the same run: the same algorithm in memory on a numpy array (faiss k-means on the same
sample size, faiss assignment, per-cluster similarity), i.e. what the pipeline adds on top.
Run: `python -m bench.semdedup_1m [--rows N] [--no-reference]`.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

D = 512
TIMES: dict = defaultdict(float)


def make_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, D) float32 unit vectors and the planted source row of each near copy (-1 for originals)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((2000, D), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = np.empty((rows, D), np.float32)
    for a in range(0, rows, 100_000):
        b = min(rows, a + 100_000)
        x[a:b] = topics[rng.integers(0, len(topics), b - a)] * 1.5
        x[a:b] += rng.standard_normal((b - a, D), dtype=np.float32) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    source = np.full(rows, -1)
    copies = rng.choice(rows, size=rows // 10, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(rows), copies), size=len(copies))
    x[copies] = x[originals] + rng.standard_normal((len(copies), D), dtype=np.float32) * (0.1 / np.sqrt(D))
    x[copies] /= np.linalg.norm(x[copies], axis=1, keepdims=True)
    source[copies] = originals
    return x, source


def write_inputs(work: str, x: np.ndarray, shards: int) -> tuple[str, str]:
    src, side = os.path.join(work, "in"), os.path.join(work, "embeddings")
    os.makedirs(src)
    os.makedirs(side)
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    for k in range(shards):
        a, b = int(bounds[k]), int(bounds[k + 1])
        uids = [f"u{i:08d}" for i in range(a, b)]
        pq.write_table(pa.table({"uid": uids, "url": [f"http://img.example.com/{u}.jpg" for u in uids]}),
                       os.path.join(src, f"part-{k:03d}.parquet"))
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].ravel()), D)
        pq.write_table(pa.table({"uid": uids, "image_embedding": emb}), os.path.join(side, f"part-{k:03d}.parquet"),
                       row_group_size=16384)
    return src, side


def timed(cls, method: str, label: str) -> None:
    original = getattr(cls, method)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - t0

    setattr(cls, method, wrapper)


def reference(x: np.ndarray, n_clusters: int, sample: int, eps: float, seed: int) -> tuple[float, int]:
    """The same algorithm in memory: returns (seconds, rows removed)."""
    import faiss

    from winnow.stages.dedup.semantic import within_cluster_duplicates

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    km = faiss.Kmeans(D, n_clusters, niter=20, spherical=True, seed=seed, max_points_per_centroid=256)
    km.train(x[rng.choice(len(x), sample, replace=False)])
    sim, assign = km.index.search(x, 1)
    removed = 0
    order = np.argsort(assign[:, 0], kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order, 0])) + 1
    for members in np.split(order, bounds):
        members = members[np.argsort(sim[members, 0])]  # farthest from the centroid first
        removed += int((within_cluster_duplicates(x[members], 1 - eps) >= 0).sum())
    return time.perf_counter() - t0, removed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="winnow-semdedup-")
    try:
        t0 = time.perf_counter()
        x, source = make_data(args.rows)
        src, side = write_inputs(work, x, args.shards)
        del x  # the pipeline reads the side dataset; the reference regenerates the same array
        print(f"input: {args.rows:,} x {D} float32 embeddings (side dataset {_size_gib(side):.2f} GiB), "
              f"{(source >= 0).sum():,} planted near copies; generated in {time.perf_counter() - t0:.0f}s")

        from winnow.pipeline.config import parse_pipeline
        from winnow.pipeline.run import execute
        from winnow.stages.dedup.semantic import SemDedup, SemDedupKMeans

        timed(SemDedupKMeans, "prepare", "embedding lookup (side dataset join)")
        timed(SemDedupKMeans, "finalize", "k-means (faiss, spherical)")
        timed(SemDedupKMeans, "apply", "assignment")
        timed(SemDedup, "decide_group", "within-cluster")
        cfg = parse_pipeline({"input": src, "write_kept": False, "stages": [
            {"stage": "semdedup_kmeans", "embeddings": side, "n_clusters": args.clusters, "sample_size": 100_000},
            {"stage": "semdedup", "eps": 0.05}]})
        out = os.path.join(work, "out")
        c0 = _cpu()
        t0 = time.perf_counter()
        stats = execute(cfg, out, progress=False)
        total = time.perf_counter() - t0
        cpu = _cpu() - c0
        TIMES["grouping (shuffle, sort, patch)"] = stats["stages"]["semdedup"]["seconds"] - TIMES["within-cluster"]
        for label, secs in TIMES.items():
            print(f"  {label:<38} {secs:7.1f}s")
        manifest = pq.read_table(os.path.join(out, "manifest"), columns=["uid", "reject_reason", "dup_of"])
        rejected = manifest.filter(manifest["reject_reason"].is_valid())
        idx = np.array([int(u[1:]) for u in rejected["uid"].to_pylist()])
        dup_of = np.array([int(u[1:]) for u in rejected["dup_of"].to_pylist()])
        planted = source >= 0
        # right when the pair is planted, whichever of the two survived (or two copies of one original)
        hit = (source[idx] == dup_of) | (source[dup_of] == idx) | (planted[idx] & (source[idx] == source[dup_of]))
        print(f"ours: {total:.0f}s end to end (bar <= 300s: {'PASS' if total <= 300 else 'FAIL'}), {cpu:.0f} CPU-s, "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; removed "
              f"{rejected.num_rows:,} (planted {planted.sum():,}): precision {hit.mean():.4f}, "
              f"recall {hit.sum() / planted.sum():.4f}")
        if not args.no_reference:
            secs, removed = reference(make_data(args.rows)[0], args.clusters, 100_000, 0.05, seed=0)
            print(f"reference in-memory SemDeDup (numpy + faiss, no I/O): {secs:.0f}s, removed {removed:,}")
        return 0 if total <= 300 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size_gib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**30


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    sys.exit(main())
