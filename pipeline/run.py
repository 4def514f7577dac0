"""Run a pipeline end to end with a chosen runner and write OUT/ as DESIGN.md §5 says."""
from __future__ import annotations

import os
import time

from winnow.pipeline import outputs, rundir, runlock
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.config import PipelineConfig
from winnow.pipeline.inputs import Shard, list_shards
from winnow.pipeline.stats import Progress
from winnow.stages.errors import WinnowError


def execute(cfg: PipelineConfig, out: str, runner: str = "local", address: str | None = None,
            progress: bool = True) -> dict:
    """Run ``cfg`` into ``out``; returns the stats dict also written to OUT/stats.json.

    The output's lock is held throughout (one run per output directory; see runlock)."""
    rundir.ensure_writable_dir(out)
    with runlock.held(out):
        return _execute(cfg, out, runner, address, progress)


def _execute(cfg: PipelineConfig, out: str, runner: str, address: str | None, progress: bool) -> dict:
    shards = list_shards(cfg.input)
    stages = cfg.build_stages()
    prog = Progress(progress)
    t0 = time.perf_counter()
    if runner == "local":
        from winnow.pipeline.runners.local import run_local

        result = run_local(stages, shards, out, cfg.columns, prog, write_kept=cfg.write_kept)
    elif runner == "ray":
        try:
            from winnow.pipeline.runners.ray_data.runner import run_ray
        except ImportError as exc:
            raise WinnowError(f"runner 'ray' is not available ({exc})") from None
        result = run_ray(stages, shards, out, cfg.columns, prog, address=address, write_kept=cfg.write_kept)
    else:
        raise WinnowError(f"unknown runner '{runner}'; use 'local' or 'ray'")
    in_pass = result["outputs_in_pass"]
    written = [outputs.shard_outputs(p, s.stem, out, cfg.write_kept, in_pass)
               for p, s in zip(result["final_parts"], shards)]
    manifest_rows = {s.index: rows for s, (rows, _) in zip(shards, written)}
    kept_rows = sum(kept for _, kept in written)
    check_conservation(shards, manifest_rows, result["input_rows"])
    run_stats = {
        "runner": runner,
        "seconds": round(time.perf_counter() - t0, 3),
        "rows_in": sum(result["input_rows"].values()),
        "rows_kept": kept_rows,
        "stages": {s.instance_name: stats_mod.finish(result["stages"].get(s.instance_name, _empty()))
                   for s in stages},
    }
    rundir.write_json_atomic(run_stats, os.path.join(out, "stats.json"))
    rundir.write_json_atomic({
        "config": cfg.to_dict() | {"output": os.path.abspath(out)},
        "runner": runner,
        "versions": outputs.package_versions(),
        "models": {s.instance_name: s.provenance() for s in stages if s.provenance()},
        "inputs": outputs.input_listing(shards),
    }, os.path.join(out, "pipeline.json"))
    return run_stats


def _empty() -> dict:
    return {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": 0.0}


def check_conservation(shards: list[Shard], manifest_rows: dict[int, int], input_rows: dict[int, int]) -> None:
    for s in shards:
        if manifest_rows.get(s.index) != input_rows.get(s.index):
            raise WinnowError(f"conservation violated for {s.path}: {input_rows.get(s.index)} input rows, "
                              f"{manifest_rows.get(s.index)} manifest rows")
