"""Webdataset export of 10,000 kept rows vs a plain `tarfile` loop writing the same members.

Bar: ours / reference <= 1.2 (seconds, best of the rounds, rounds interleaved so machine load hits both).
The run directory is built directly: OUT/kept/ as 10 parts of 1,000 rows (uid, caption, image bytes, width,
height, lang_score; images from `winnow sample`, 200 distinct ones reused under distinct uids), manifest/ and
pipeline.json as a run leaves them. Both sides read the same Parquet parts and write three members per sample
(image with its sniffed extension, txt, json of uid + numeric columns) with fixed headers.
Ours: `winnow export RUN --format webdataset` (pipeline/export/webdataset.py), 1,000 samples per shard.
Reference: one loop over pyarrow rows into `tarfile`, the same shard size.
Run: `python -m bench.export_webdataset [--rows 10000] [--rounds 3]`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.pipeline import rundir
from winnow.pipeline.export.main import run_export
from winnow.pipeline.export.spec import parse_export
from winnow.pipeline.tools.sample import generate

PER_SHARD = 1000


def make_run(out: str, rows: int, parts: int = 10) -> None:
    samples, _ = generate(200, seed=1)
    images = [b for b in samples["image"].to_pylist() if b and b[:3] in (b"\xff\xd8\xff", b"\x89PN")]
    captions = samples["caption"].to_pylist()
    per_part = rows // parts
    for k in range(parts):
        ids = range(k * per_part, (k + 1) * per_part)
        table = pa.table({"uid": [f"b-{i:08d}" for i in ids], "caption": [captions[i % 200] or "x" for i in ids],
                          "image": pa.array([images[i % len(images)] for i in ids], pa.binary()),
                          "reject_stage": pa.array([None] * per_part, pa.string()),
                          "width": pa.array([256 + i % 300 for i in ids], pa.int32()),
                          "height": pa.array([256 + i % 200 for i in ids], pa.int32()),
                          "lang_score": pa.array([0.5 + (i % 50) / 100 for i in ids], pa.float32())})
        rundir.write_parquet_atomic(table, rundir.kept_part(out, f"p{k:02d}"))
        rundir.write_parquet_atomic(table.drop(["image"]), rundir.manifest_part(out, f"p{k:02d}"))
    rundir.write_json_atomic({"config": {"seed": 0, "write_kept": True, "stages": []}},
                             rundir.pipeline_record_path(out))


def reference(out: str, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    tar, n, index = None, 0, 0
    for part in sorted(os.listdir(rundir.kept_dir(out))):
        t = pq.read_table(os.path.join(rundir.kept_dir(out), part))
        cols = {c: t[c].to_pylist() for c in ("uid", "caption", "image", "width", "height", "lang_score")}
        for i, uid in enumerate(cols["uid"]):
            if n % PER_SHARD == 0:
                if tar:
                    tar.close()
                tar, index = tarfile.open(os.path.join(dest, f"{index:08d}.tar"), "w", format=tarfile.GNU_FORMAT), \
                    index + 1
            image = cols["image"][i]
            ext = "jpg" if image[:3] == b"\xff\xd8\xff" else "png"
            meta = json.dumps({"uid": uid, **{c: cols[c][i] for c in ("width", "height", "lang_score")}}).encode()
            for name, data in ((f"{uid}.{ext}", image), (f"{uid}.txt", cols["caption"][i].encode()),
                               (f"{uid}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
            n += 1
    if tar:
        tar.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        make_run(run, args.rows)
        spec = parse_export({"format": "webdataset", "samples_per_shard": PER_SHARD}, "bench")
        ours, ref = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            result = run_export(run, spec)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reference(run, os.path.join(tmp, f"ref{r}"))
            ref.append(time.perf_counter() - t0)
        size = sum(os.path.getsize(os.path.join(result["output"], n)) for n in os.listdir(result["output"]))
        a, b = min(ours), min(ref)
        print(f"rows {result['samples']} in {result['shards']} shards, {size / 1e6:.0f} MB of tar")
        print(f"ours (winnow export)  {a:.3f} s  {result['samples'] / a:,.0f} samples/s")
        print(f"reference (tarfile)   {b:.3f} s  {result['samples'] / b:,.0f} samples/s")
        print(f"ours / reference      {a / b:.2f}x  (bar: <= 1.2x)")


if __name__ == "__main__":
    main()
