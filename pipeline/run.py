"""Run a pipeline end to end with a chosen runner and write OUT/ as DESIGN.md §5 says."""
from __future__ import annotations

import os
import time

import pyarrow.parquet as pq

from pipeline import outputs
from pipeline import stats as stats_mod
from pipeline.config import PipelineConfig
from pipeline.errors import WinnowError
from pipeline.inputs import Shard, list_shards
from pipeline.stats import Progress


def execute(cfg: PipelineConfig, out: str, runner: str = "local", address: str | None = None,
            progress: bool = True) -> dict:
    """Run ``cfg`` into ``out``; returns the stats dict also written to OUT/stats.json."""
    outputs.ensure_writable_dir(out)
    shards = list_shards(cfg.input)
    stages = cfg.build_stages()
    for stage in stages:  # stages with side outputs (e.g. clip_score embeddings) resolve relative paths here
        stage.run_dir = os.path.abspath(out)
    prog = Progress(progress)
    t0 = time.perf_counter()
    if runner == "local":
        from pipeline.local_runner import run_local

        result = run_local(stages, shards, out, cfg.columns, prog)
    elif runner == "ray":
        try:
            from pipeline.ray_runner import run_ray
        except ImportError as exc:
            raise WinnowError(f"runner 'ray' is not available ({exc})") from None
        result = run_ray(stages, shards, out, cfg.columns, prog, address=address)
    else:
        raise WinnowError(f"unknown runner '{runner}'; use 'local' or 'ray'")
    manifest_rows, kept_rows = write_final_outputs(result["final_parts"], shards, out, cfg.write_kept)
    check_conservation(shards, manifest_rows, result["input_rows"])
    run_stats = {
        "runner": runner,
        "seconds": round(time.perf_counter() - t0, 3),
        "rows_in": sum(result["input_rows"].values()),
        "rows_kept": kept_rows,
        "stages": {s.instance_name: stats_mod.finish(result["stages"].get(s.instance_name, _empty()))
                   for s in stages},
    }
    outputs.write_json_atomic(run_stats, os.path.join(out, "stats.json"))
    outputs.write_json_atomic({
        "config": cfg.to_dict() | {"output": os.path.abspath(out)},
        "runner": runner,
        "versions": outputs.package_versions(),
        "models": {s.instance_name: s.provenance() for s in stages if s.provenance()},
        "inputs": outputs.input_listing(shards),
    }, os.path.join(out, "pipeline.json"))
    return run_stats


def write_final_outputs(final_parts: list[str], shards, out: str, write_kept: bool) -> tuple[dict[int, int], int]:
    """manifest/part-K.parquet (+ kept/part-K.parquet) per input shard; returns (manifest rows per shard, kept)."""
    rows, kept = {}, 0
    for shard, path in zip(shards, final_parts):
        table = pq.read_table(path)
        rows[shard.index] = table.num_rows
        outputs.write_parquet_atomic(outputs.manifest_view(table),
                                     os.path.join(out, "manifest", f"part-{shard.stem}.parquet"))
        kept_table = outputs.kept_view(table)
        kept += kept_table.num_rows
        if write_kept:
            outputs.write_parquet_atomic(kept_table, os.path.join(out, "kept", f"part-{shard.stem}.parquet"))
    return rows, kept


def _empty() -> dict:
    return {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": 0.0}


def check_conservation(shards: list[Shard], manifest_rows: dict[int, int], input_rows: dict[int, int]) -> None:
    for s in shards:
        if manifest_rows.get(s.index) != input_rows.get(s.index):
            raise WinnowError(f"conservation violated for {s.path}: {input_rows.get(s.index)} input rows, "
                              f"{manifest_rows.get(s.index)} manifest rows")
