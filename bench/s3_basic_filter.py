"""The Ray basic_filter pipeline with input and output on an S3 API (moto's server on 127.0.0.1) vs on local disk.

    python -m bench.s3_basic_filter [--shards 2 4 8] [--rows-per-shard 2000] [--repeat 1] [--keep DIR]

Data: `winnow sample` rows (drawn images, planted problems; as bench/ray_vs_local.py makes them) in Parquet
shards, the same bytes on disk and in a bucket. Pipeline: examples/basic.yaml (basic_filter, kept set with
image bytes written), run by `winnow run` on an embedded Ray, each command its own process, timed end to end,
with the peak memory of its whole process tree (PSS of the driver, Ray's daemons and workers, sampled every
0.2 s; moto's server is a separate process and not counted). Manifests on S3 must equal those on disk.

moto keeps objects in one Python process's memory and serves one request at a time per thread: it is slower
than S3 or MinIO, so the S3/disk ratio here is an upper bound of the overhead. Memory should stay flat as
shards grow (the runner streams shards; nothing holds a whole input).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from bench.ray_vs_local import REPO, make_data, manifest, timed_run
from tests.s3_fixtures import MotoServer, client, isolate_aws_env


def s3_manifest(out: str):
    import pyarrow as pa

    from winnow.stages import storage

    parts = storage.list_files(storage.join(out, "manifest"))
    return pa.concat_tables([storage.read_parquet(p) for p in parts]).sort_by("uid")


def write_pipeline(path: str, data: str) -> None:
    with open(os.path.join(REPO, "examples", "basic.yaml"), encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("input: sample/", f"input: {data}/"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--rows-per-shard", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate disk and S3 this many times and keep each one's fastest (damps other load)")
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    isolate_aws_env()
    work = args.keep or tempfile.mkdtemp(prefix="winnow-bench-s3-")
    server = MotoServer()
    os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint  # every `winnow run` below inherits it
    from winnow.stages import storage

    try:
        all_data = os.path.join(work, "data")
        if not os.path.isdir(all_data):
            t0 = time.perf_counter()
            make_data(all_data, max(args.shards), args.rows_per_shard)
            print(f"data: {max(args.shards)} shards x {args.rows_per_shard} rows in {time.perf_counter() - t0:.0f}s")
        shards = sorted(os.listdir(all_data))
        client(server.endpoint).create_bucket(Bucket="bench")
        rows_out = []
        for n in args.shards:
            local = os.path.join(work, f"data-{n}")
            os.makedirs(local, exist_ok=True)
            for name in shards[:n]:
                shutil.copyfile(os.path.join(all_data, name), os.path.join(local, name))
                with open(os.path.join(local, name), "rb") as f:
                    storage.write_bytes(f.read(), f"s3://bench/data-{n}/{name}")
            mib = sum(os.path.getsize(os.path.join(local, s)) for s in shards[:n]) / 2**20
            results: dict = {}
            for _ in range(max(1, args.repeat)):
                for where, data, out in (("disk", local, os.path.join(work, f"out-{n}")),
                                         ("s3", f"s3://bench/data-{n}", f"s3://bench/out-{n}")):
                    pipeline = os.path.join(work, f"basic-{where}-{n}.yaml")
                    write_pipeline(pipeline, data)
                    storage.rmtree(out)
                    wall, peak, _ = timed_run(pipeline, out, "ray")
                    best = results.get(where)
                    results[where] = (min(wall, best[0]), max(peak, best[1])) if best else (wall, peak)
            same = manifest(os.path.join(work, f"out-{n}")).equals(s3_manifest(f"s3://bench/out-{n}"))
            rows_out.append((n, n * args.rows_per_shard, mib, results, same))
        print(f"basic_filter on embedded Ray, {os.cpu_count()} CPUs, S3 = moto {server.endpoint}, "
              f"best wall of {max(1, args.repeat)} (peak memory: the highest); "
              f"load average now {os.getloadavg()[0]:.1f}")
        print(f"{'shards':>6}{'rows':>8}{'input MiB':>10}{'disk s':>8}{'S3 s':>8}{'S3/disk':>8}"
              f"{'disk peak MiB':>14}{'S3 peak MiB':>12}  manifests identical")
        ok = True
        for n, rows, mib, res, same in rows_out:
            (dw, dm), (sw, sm) = res["disk"], res["s3"]
            print(f"{n:>6}{rows:>8,}{mib:>10.0f}{dw:>8.1f}{sw:>8.1f}{sw / dw:>7.2f}x"
                  f"{dm / 2**20:>14,.0f}{sm / 2**20:>12,.0f}  {same}")
            ok = ok and same
        return 0 if ok else 1
    finally:
        server.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
