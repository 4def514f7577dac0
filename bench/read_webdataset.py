"""Reading a webdataset pool vs reading the same rows from Parquet with the bytes inside, one core.

The pool is laid out as img2dataset writes it (``{key}.jpg/.txt/.json`` per sample in ``00000.tar``,
``00000.parquet`` listing every row, 1 in 20 a failed download, ``00000_stats.json``), from the real
COCO photos re-encoded at 256 px (~DataComp-sized bodies); the Parquet holds the same rows with a
``jpg`` column, as img2dataset's ``parquet`` output does. Both go through ``read_shard``: rows/s and MB/s
(bytes on disk read per second).
Run: `python -m bench.read_webdataset [--samples 10240] [--shards 4]` (needs ../shared/data).

Measured (2-core dev machine shared with other jobs, load ~10; 10,240 samples, 4 shards, 1 core):
  webdataset tars + sidecar parquet   12,018 rows/s    213 MB/s
  parquet with bytes                  98,960 rows/s  1,489 MB/s
The tar path is bound by Python's tarfile parsing each 512-byte header (~36 us a member, three members a
sample): a 10,000-sample DataComp shard reads in under a second, well under its filtering cost; a
hand-rolled ustar header parser is the next step if it ever dominates.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from winnow.pipeline.inputs import list_shards, read_shard  # noqa: E402

COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "images", "coco")


def photos(side: int = 256) -> list[bytes]:
    from PIL import Image

    out = []
    for name in sorted(n for n in os.listdir(COCO) if n.endswith(".jpg"))[:64]:
        with Image.open(os.path.join(COCO, name)) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def write_pools(root: str, samples: int, shards: int) -> tuple[str, str]:
    imgs = photos()
    wds, par = os.path.join(root, "webdataset"), os.path.join(root, "parquet")
    os.makedirs(wds)
    os.makedirs(par)
    per = samples // shards
    for s in range(shards):
        keys = [f"{s:05d}{i:04d}" for i in range(per)]
        failed = [i % 20 == 7 for i in range(per)]
        rows = {"uid": [f"{s * per + i:032x}" for i in range(per)], "key": keys,
                "url": [f"http://example.com/{k}.jpg" for k in keys],
                "caption": [f"a photo of a street scene, sample {k}" for k in keys],
                "status": ["failed_to_download" if f else "success" for f in failed],
                "error_message": ["HTTP Error 404: Not Found" if f else None for f in failed],
                "width": [None if f else 256 for f in failed], "height": [None if f else 192 for f in failed]}
        # unique bodies (a trailer after the JPEG's end marker), or Parquet's dictionary encoding would store
        # 64 photos once and measure nothing
        images = [None if f else imgs[i % len(imgs)] + keys[i].encode() for i, f in enumerate(failed)]
        with tarfile.open(os.path.join(wds, f"{s:05d}.tar"), "w") as tar:
            for i, key in enumerate(keys):
                if failed[i]:
                    continue
                meta = json.dumps({name: col[i] for name, col in rows.items()}, indent=4).encode()
                for ext, data in (("jpg", images[i]), ("txt", rows["caption"][i].encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.table(rows), os.path.join(wds, f"{s:05d}.parquet"))
        pq.write_table(pa.table(rows | {"jpg": pa.array(images, pa.binary())}), os.path.join(par, f"{s:05d}.parquet"))
        for folder in (wds, par):
            with open(os.path.join(folder, f"{s:05d}_stats.json"), "w") as f:
                json.dump({"count": per, "successes": per - sum(failed)}, f)
    return wds, par


def measure(spec: str, repeats: int) -> tuple[float, float, int]:
    """(rows/s, MB/s on disk, rows): best of ``repeats`` full reads of every shard."""
    shards = list_shards(spec)
    size = sum(os.path.getsize(os.path.join(os.path.dirname(s.path), f)) for s in shards
               for f in os.listdir(os.path.dirname(s.path)) if f.startswith(os.path.basename(s.path)[:5]))
    best, rows = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = sum(read_shard(s).num_rows for s in shards)
        best = min(best, time.perf_counter() - t0)
    return rows / best, size / best / 1e6, rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10240)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.isdir(COCO):
        print(f"skipped: {COCO} not found")
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory(prefix="winnow-bench-wds-") as root:
        wds, par = write_pools(root, args.samples, args.shards)
        measure(wds, 1)  # warm the page cache for both: this measures parsing, not the disk
        measure(par, 1)
        for name, spec in (("webdataset tars + sidecar parquet", wds), ("parquet with bytes", par)):
            rps, mbps, rows = measure(spec, args.repeats)
            print(f"{name:34s} {rows:6d} rows  {rps:10,.0f} rows/s  {mbps:8,.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
