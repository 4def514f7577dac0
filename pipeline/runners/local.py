"""The in-process runner: shard after shard, no Ray. The reference the Ray runner must equal.

Each segment's output is checkpointed per shard (``rundir.part_path``: the Parquet file is the
completion marker, its stats sit beside it), and each barrier's artifact under ``OUT/artifacts/``;
a rerun skips whatever exists, so an interrupted run resumes. Parts hold no input image bytes: a
segment whose steps read them, and the kept set, get them from the input again (``rowrefs``).
"""
from __future__ import annotations

import time

import pyarrow as pa

from winnow.pipeline import outputs, rowrefs, rundir
from winnow.pipeline import plan as plan_mod
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.fingerprint import RunFingerprints
from winnow.pipeline.groups import group_barrier
from winnow.pipeline.inputs import Shard, read_shard
from winnow.pipeline.rundir import FINGERPRINT, INPUT_ROWS, part_path
from winnow.pipeline.stats import Progress
from winnow.stages import storage
from winnow.stages.base import GlobalStage, GroupStage, Stage
from winnow.stages.columns import ensure_reject_columns, live_mask


def run_local(stages: list[Stage], shards: list[Shard], out: str, columns: dict[str, str],
              progress: Progress, fingerprints: RunFingerprints, write_kept: bool | None = None) -> dict:
    """Run every segment over every shard; returns per-stage stats merged over the run.

    A piece is reused only when the fingerprint recorded with it is ``fingerprints``' (what would
    produce it now). With ``write_kept`` given, a final segment without a barrier also writes each
    shard's manifest (and kept) file from the rows in memory, before the part that marks the shard done.
    """
    segments = plan_mod.make_plan(stages, rundir.stage_context(out))
    images = rowrefs.plan_images(segments)  # parts hold no input image bytes (pipeline/rowrefs.py)
    stats: dict[str, dict] = {}
    input_rows: dict[int, int] = {}
    for k, seg in enumerate(segments):
        for shard in shards:
            path = part_path(out, k, shard.stem)
            fp = fingerprints.part(k, shard.index)
            if not rundir.part_done(path, fp):
                table = _load_input(out, k, shard, columns, stages)
                if images.attach_at_start(k):  # a step of this segment reads the image: back from the input
                    table = rowrefs.attach(table, shard, columns, live_mask(table))
                n_in = table.num_rows
                table, st = plan_mod.run_steps(seg.steps, table)
                if k == 0:
                    st[INPUT_ROWS] = {"rows": n_in}
                rundir.write_json_atomic({FINGERPRINT: fp, **st}, path + ".stats.json")
                if write_kept is not None and plan_mod.writes_outputs(segments, k):
                    outputs.write_table_outputs(table, shard.stem, out, write_kept,
                                                (shard, columns) if images.kept_from_input() else None)
                rundir.write_parquet_atomic(images.strip(table, k), path)
                for name, s in st.items():
                    if name not in (INPUT_ROWS, FINGERPRINT):
                        progress.report(name, f"shard {shard.stem}", s)
            rundir.merge_part_stats(path, shard.index, stats, input_rows)
        if isinstance(seg.barrier, GlobalStage):
            artifact = _global_barrier(seg.barrier, out, k, shards, fingerprints.barrier(k))
            segments[k + 1].steps[0].artifact = artifact
        elif isinstance(seg.barrier, GroupStage):
            st = _group_barrier(seg.barrier, out, k, shards, fingerprints.barrier(k))
            stats[seg.barrier.instance_name] = stats_mod.merge(stats.get(seg.barrier.instance_name, {}), st)
            progress.report(seg.barrier.instance_name, "all shards", st)
    final = [rundir.final_part(out, len(segments) - 1, s.stem) for s in shards]
    return {"stages": stats, "final_parts": final, "input_rows": input_rows,
            "outputs_in_pass": write_kept is not None and plan_mod.writes_outputs(segments, len(segments) - 1)}


def _load_input(out: str, k: int, shard: Shard, columns: dict[str, str], stages: list[Stage]) -> pa.Table:
    if k > 0:
        return storage.read_parquet(rundir.final_part(out, k - 1, shard.stem))
    table = ensure_reject_columns(read_shard(shard, columns))
    if stages:
        stages[0].check_columns(table.schema, f"input {shard.path}")
    return table


def _global_barrier(stage: GlobalStage, out: str, k: int, shards: list[Shard], fp: str) -> dict:
    artifact = rundir.load_artifact(out, stage.instance_name, fp)
    if artifact is not None:
        return artifact
    parts = [plan_mod.global_partial(stage, storage.read_parquet(part_path(out, k, s.stem))) for s in shards]
    artifact = stage.finalize(stage.combine(parts))
    rundir.save_artifact(stage, artifact, out, fp)
    return artifact


def _group_barrier(stage: GroupStage, out: str, k: int, shards: list[Shard], fp: str) -> dict:
    """Group over the whole run (not per shard), then split back per shard."""
    parts = [part_path(out, k, s.stem) for s in shards]
    done = [rundir.grouped_path(p) for p in parts]
    stats_path = rundir.group_stats_path(out, k, stage.instance_name)
    previous = rundir.read_if_done(stats_path, fp)
    if previous is not None and all(storage.exists(p) for p in done):
        return previous
    # Bounded memory: only the columns deciding reads, hash-partitioned on disk (pipeline/groups.py).
    t0 = time.perf_counter()
    st = group_barrier(stage, parts, done, rundir.group_work_dir(out, k, stage.instance_name))
    st["seconds"] = time.perf_counter() - t0
    rundir.write_json_atomic({FINGERPRINT: fp, **st}, stats_path)
    return st
