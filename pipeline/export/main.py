"""One export of a run, from a pipeline's ``exports:`` list or from ``winnow export RUN_DIR --format ...``."""
from __future__ import annotations

import os

from winnow.pipeline import rundir
from winnow.pipeline.export.datacomp import export_datacomp
from winnow.pipeline.export.hf_parquet import export_parquet
from winnow.pipeline.export.source import check_run, read_record
from winnow.pipeline.export.spec import ExportSpec, parse_export
from winnow.pipeline.export.webdataset import export_webdataset
from winnow.stages import storage

WRITERS = {"webdataset": export_webdataset, "datacomp-subset": export_datacomp, "parquet": export_parquet}


def run_export(run_dir: str, spec: ExportSpec) -> dict:
    """Write ``spec``'s export of the run in ``run_dir``; the shuffle seed defaults to the run's seed."""
    check_run(run_dir)
    seed = spec.seed
    if seed is None:
        seed = read_record(run_dir, rundir.pipeline_record_path(run_dir)).get("config", {}).get("seed", 0)
    return WRITERS[spec.format](run_dir, spec, int(seed))


def main(args) -> int:
    """`winnow export`: the CLI's flags make the same entry an ``exports:`` list would hold."""
    entry = {"format": args.format, "output": args.output}
    if args.samples_per_shard is not None:
        entry["samples_per_shard"] = args.samples_per_shard
    if args.shuffle:
        entry["shuffle"] = True
    if args.seed is not None:
        entry["seed"] = args.seed
    spec = parse_export({k: v for k, v in entry.items() if v is not None}, f"export {args.format}")
    result = run_export(args.run_dir if storage.is_remote(args.run_dir) else os.path.normpath(args.run_dir), spec)
    print(summary(result))
    return 0


def summary(result: dict) -> str:
    extra = "".join(f", {k} {result[k]}" for k in ("shards", "files", "skipped") if result.get(k))
    return f"export {result['format']}: {result['samples']} samples{extra} -> {result['output']}"
