"""Download throughput: winnow's download stage vs raw img2dataset.download, same URLs, same run.

A loopback server (tests/stages/download/http_fixtures.py) serves the real COCO photos under N distinct
URLs. Both sides use the same processes and threads, keep the original bytes and compute sha256:
raw img2dataset with resize_mode="no", skip_reencode=True (its way of keeping JPEG bytes), one
input shard per process; winnow's stage on the same list as one input shard, as the local runner
calls it. Each round times both from a cold start (worker processes spawned inside the timing, as
img2dataset spawns its own on every call); winnow's warm figure (pool already running, as for
every shard after the first) is printed too. Bar (issue 4): winnow cold >= 0.9x raw.

Run: `python -m bench.download_throughput [--images 4000 --processes 2 --threads 32 --rounds 3]`
(needs ../shared/data/images/coco).
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "images", "coco")


def run_raw(url_file: str, out: str, n: int, processes: int, threads: int) -> tuple[float, float, int]:
    """(seconds end to end, seconds of its download phase alone, successes)."""
    import json

    from img2dataset import download

    t0 = time.perf_counter()
    with _quiet():  # img2dataset and its spawned workers print progress on fds 1 and 2
        download(url_list=url_file, input_format="parquet", url_col="url", output_format="parquet",
                 output_folder=out, processes_count=processes, thread_count=threads,
                 number_sample_per_shard=math.ceil(n / processes), resize_mode="no", skip_reencode=True,
                 extract_exif=False, compute_hash="sha256", timeout=10, retries=0, user_agent_token="img2dataset")
    seconds = time.perf_counter() - t0
    ok = sum(pq.read_table(p, columns=["status"])["status"].to_pylist().count("success")
             for p in glob.glob(os.path.join(out, "*.parquet")))
    shard_stats = [json.load(open(p)) for p in glob.glob(os.path.join(out, "*_stats.json"))]
    phase = max(s["end_time"] for s in shard_stats) - min(s["start_time"] for s in shard_stats)
    return seconds, phase, ok


class _quiet:
    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


def run_winnow(table: pa.Table, processes: int, threads: int, cold: bool) -> tuple[float, int]:
    from winnow.pipeline.plan import Step
    from winnow.stages.download import fetch as download_mod

    if cold:
        for pool in list(download_mod._POOLS.values()):
            download_mod.discard_pool(pool)
    stage = download_mod.Download(allow_private_networks=True, processes=processes, threads=threads, timeout=10.0)
    t0 = time.perf_counter()
    _, stats = Step(stage, "map").run(table)  # setup (worker start when cold) + the whole shard
    return time.perf_counter() - t0, stats["kept"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not glob.glob(os.path.join(COCO, "*.jpg")):
        print(f"skipped: no photos in {COCO}")
        return 0
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.stages.download.http_fixtures import FixtureServer

    n = args.images
    raw_s, phase_s, cold_s, warm_s = [], [], [], []
    with FixtureServer(COCO) as server, tempfile.TemporaryDirectory(prefix="winnow-bench-") as tmp:
        urls = [server.url(f"/img/{i}.jpg") for i in range(n)]
        table = pa.table({"uid": [f"{i:08d}" for i in range(n)], "url": urls})
        url_file = os.path.join(tmp, "urls.parquet")
        pq.write_table(table.select(["url"]), url_file)
        for r in range(args.rounds):  # interleaved, so a noisy neighbour hits both sides alike
            seconds, phase, ok = run_raw(url_file, os.path.join(tmp, f"raw-{r}"), n, args.processes, args.threads)
            assert ok == n, f"raw img2dataset downloaded {ok} of {n}"
            raw_s.append(seconds)
            phase_s.append(phase)
            for cold, bucket in ((True, cold_s), (False, warm_s)):
                seconds, ok = run_winnow(table, args.processes, args.threads, cold)
                assert ok == n, f"winnow downloaded {ok} of {n}"
                bucket.append(seconds)
            print(f"round {r + 1}: raw {n / raw_s[-1]:,.0f} img/s (download phase {n / phase_s[-1]:,.0f}), "
                  f"winnow cold {n / cold_s[-1]:,.0f} img/s, warm {n / warm_s[-1]:,.0f} img/s", flush=True)
    raw, phase, cold, warm = (n / statistics.median(s) for s in (raw_s, phase_s, cold_s, warm_s))
    print(f"images: {n} distinct loopback URLs (real COCO JPEGs, {args.processes} processes x {args.threads} "
          f"threads), median of {args.rounds} rounds")
    print(f"raw img2dataset.download : {raw:,.0f} img/s (reference, incl. its worker start)")
    print(f"winnow download stage    : {cold:,.0f} img/s cold (incl. worker start) = {cold / raw:.2f}x raw "
          f"(bar 0.9x: {'PASS' if cold >= 0.9 * raw else 'FAIL'})")
    print(f"winnow download stage    : {warm:,.0f} img/s warm (pool already running, everything else timed) = "
          f"{warm / phase:.2f}x raw's download phase alone ({phase:,.0f} img/s: its workers' first start to last end)")
    return 0


if __name__ == "__main__":  # img2dataset and winnow both spawn worker processes: guard the entry point
    sys.exit(main())
