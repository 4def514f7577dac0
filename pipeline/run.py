"""Run a pipeline end to end with a chosen runner and write OUT/ as DESIGN.md §5 says."""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from winnow.pipeline import fingerprint, outputs, rowrefs, rundir, runlock
from winnow.pipeline import plan as plan_mod
from winnow.pipeline import resume as resume_mod
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.config import PipelineConfig
from winnow.pipeline.export.main import run_export, summary
from winnow.pipeline.inputs import (
    Shard,
    canonicalize,
    column_sources,
    count_rows,
    list_shards,
    read_shard,
    source_names,
)
from winnow.pipeline.stats import Progress
from winnow.stages import storage
from winnow.stages.columns import ensure_reject_columns
from winnow.stages.errors import WinnowError


def execute(cfg: PipelineConfig, out: str, runner: str = "local", address: str | None = None,
            progress: bool = True, fresh: bool = False, resume: str = "auto") -> dict:
    """Run ``cfg`` into ``out``; returns the stats dict also written to OUT/stats.json.

    ``fresh`` starts over in ``out``; ``resume="force"`` resumes there even after the pipeline changed
    (only pieces whose fingerprints still match are reused). See ``pipeline/resume.py``. The output's lock
    is held throughout, ``--fresh``'s clearing included (one run per output directory; see runlock).
    """
    if cfg.storage:
        storage.configure(**cfg.storage)
    rundir.ensure_writable_dir(out)
    with runlock.held(out):
        return _execute(cfg, out, runner, address, progress, fresh, resume)


def _execute(cfg: PipelineConfig, out: str, runner: str, address: str | None, progress: bool, fresh: bool,
             resume: str) -> dict:
    shards = list_shards(cfg.input)
    stages = cfg.build_stages()
    input_report = check_input(stages, shards, cfg.columns)
    segments = plan_mod.make_plan(stages)
    fps = fingerprint.for_run(segments, shards, cfg.columns)
    resume_mod.prepare(out, fps, fingerprint.describe(segments, cfg.columns), shards, cfg.write_kept,
                       fresh=fresh, resume=resume)
    resumed = resume_mod.summary(out, fps, shards)
    if resumed:
        print(f"winnow: {resumed}", file=sys.stderr)
    prog = Progress(progress)
    t0 = time.perf_counter()
    if runner == "local":
        from winnow.pipeline.runners.local import run_local

        result = run_local(stages, shards, out, cfg.columns, prog, fps, write_kept=cfg.write_kept)
    elif runner == "ray":
        try:
            from winnow.pipeline.runners.ray_data.runner import run_ray
        except ImportError as exc:
            raise WinnowError(f"runner 'ray' is not available ({exc})") from None
        result = run_ray(stages, shards, out, cfg.columns, prog, fps, address=address, write_kept=cfg.write_kept)
    else:
        raise WinnowError(f"unknown runner '{runner}'; use 'local' or 'ray'")
    in_pass = result["outputs_in_pass"]
    kept_from_input = rowrefs.plan_images(segments).kept_from_input()  # final parts without image bytes
    written = [outputs.shard_outputs(p, s.stem, out, cfg.write_kept, in_pass,
                                     (s, cfg.columns) if kept_from_input else None)
               for p, s in zip(result["final_parts"], shards)]
    input_rows = {s.index: count_rows(s, cfg.columns) for s in shards}  # the input as it is now
    check_conservation(shards, {s.index: rows for s, (rows, _) in zip(shards, written)}, input_rows)
    check_unique_uids([rundir.manifest_part(out, s.stem) for s in shards])
    run_stats = {
        "runner": runner,
        "seconds": round(time.perf_counter() - t0, 3),
        "rows_in": sum(input_rows.values()),
        "rows_kept": sum(kept for _, kept in written),
        "stages": {s.instance_name: stats_mod.finish(result["stages"].get(s.instance_name, _empty()))
                   for s in stages},
    }
    if resumed:
        run_stats["resumed"] = resumed
    rundir.write_json_atomic(run_stats, rundir.stats_path(out))
    rundir.write_json_atomic({
        "config": cfg.to_dict() | {"output": storage.abspath(out)},
        "runner": runner,
        "versions": outputs.package_versions(),
        "models": {s.instance_name: s.provenance() for s in stages if s.provenance()},
        "inputs": outputs.input_listing(shards, input_rows),
        "columns": input_report["columns"],
        "idle_rules": input_report["idle_rules"],
        "fingerprint": fps.pipeline,
    }, rundir.pipeline_record_path(out))
    # After the run, beside its summary: a failing run's only stderr line stays its one-line error.
    print(input_line(input_report), file=sys.stderr)
    for spec in cfg.exports:  # after every output of the run: an export reads the finished run
        print(f"winnow: {summary(run_export(out, spec))}", file=sys.stderr)
    return run_stats


def check_input(stages, shards: list[Shard], columns: dict) -> dict:
    """The pipeline's column needs against the input, before anything runs: every Parquet shard's footer
    (cheap, and a shard that is not Parquet fails here) and the first text shard, read whole.

    Returns what the run then reports: ``columns`` (canonical -> the source column that fed it; shards that
    differ give ``"a | b"``) and ``idle_rules`` (stage -> enabled rules with no column to act on, any shard)."""
    parquet = [s for s in shards if s.format == "parquet"]
    text = [s for s in shards if s.format != "parquet"][:1]
    fed: dict[str, list[str]] = {}
    idle: dict[str, list[str]] = {}
    for shard in parquet + text:
        try:
            names = source_names(shard)
        except Exception as exc:
            raise WinnowError(f"input {shard.path}: cannot be read as {shard.format} "
                              f"({str(exc).splitlines()[0]})") from None
        if shard.format == "parquet":
            table = canonicalize(storage.read_schema(shard.path).empty_table(), columns, shard.path)
            if "uid" not in table.column_names:
                table = table.append_column("uid", pa.array([], pa.string()))
        else:
            table = read_shard(shard, columns)
        sources = column_sources(names, columns, shard.path)
        sources.setdefault("uid", "(derived)")
        for canon, src in sources.items():
            fed.setdefault(canon, []).append(src)
        schema = ensure_reject_columns(table).schema
        plan_mod.check_columns(stages, schema, shard.path)
        for stage, rules in plan_mod.idle_rules(stages, schema).items():
            idle[stage] = list(dict.fromkeys(idle.get(stage, []) + rules))
    return {"columns": {c: " | ".join(dict.fromkeys(v)) for c, v in fed.items()}, "idle_rules": idle}


def input_line(report: dict) -> str:
    """One stderr line: which source column fed each canonical column, and which rules have nothing to act on."""
    cols = ", ".join(f"{c}<-{s}" for c, s in report["columns"].items())
    line = f"winnow: columns: {cols or 'none recognised'}"
    if report["idle_rules"]:
        idle = "; ".join(f"{st} {', '.join(rules)}" for st, rules in report["idle_rules"].items())
        line += f"; rules with no column to act on: {idle}"
    return line


def _empty() -> dict:
    return {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": 0.0}


def check_conservation(shards: list[Shard], manifest_rows: dict[int, int], input_rows: dict[int, int]) -> None:
    """Every input row, counted in the input as it is now, is in the manifest exactly once."""
    for s in shards:
        if manifest_rows.get(s.index) != input_rows.get(s.index):
            raise WinnowError(f"conservation violated for {s.path}: {input_rows.get(s.index)} input rows, "
                              f"{manifest_rows.get(s.index)} manifest rows")


def check_unique_uids(manifests: list[str]) -> None:
    """No uid in two manifest rows (within a shard the reader checks; this catches uids repeated across
    shards). 64-bit hashes of the uids are compared first, so only a real repeat costs a second look."""
    hashes, owners = [], []
    for i, path in enumerate(manifests):
        uids = storage.read_parquet(path, columns=["uid"])["uid"].to_numpy(zero_copy_only=False)
        hashes.append(pd.util.hash_array(uids.astype(object)))
        owners.append(np.full(len(uids), i, np.int32))
    if not hashes:
        return
    flat = np.concatenate(hashes)
    order = np.argsort(flat, kind="stable")
    repeats = np.flatnonzero(flat[order][1:] == flat[order][:-1])
    if not len(repeats):
        return
    where = np.concatenate(owners)[order]
    for r in repeats:
        a, b = manifests[where[r]], manifests[where[r + 1]]
        uids_a = set(storage.read_parquet(a, columns=["uid"])["uid"].to_pylist())
        common = uids_a & set(storage.read_parquet(b, columns=["uid"])["uid"].to_pylist()) if a != b else set()
        if common:
            raise WinnowError(f"uid '{sorted(common)[0]}' occurs in more than one input shard (manifest {a} and "
                              f"{b}); uids must be unique across the input")
