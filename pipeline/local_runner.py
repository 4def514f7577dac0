"""The in-process runner: shard after shard, no Ray. The reference the Ray runner must equal.

Each segment's output is checkpointed per shard under ``OUT/work/seg-K/`` (the Parquet file is
the completion marker, its stats sit beside it), and each barrier's artifact under
``OUT/artifacts/``; a rerun skips whatever exists, so an interrupted run resumes.
"""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import outputs, plan as plan_mod
from pipeline import stats as stats_mod
from pipeline.inputs import Shard, read_shard
from pipeline.stats import Progress
from stages.base import GlobalStage, GroupStage, Stage, ensure_reject_columns


INPUT_ROWS = "__input__"


def seg_dir(out: str, k: int) -> str:
    return os.path.join(out, "work", f"seg-{k}")


def part_path(out: str, k: int, shard: Shard) -> str:
    return os.path.join(seg_dir(out, k), f"part-{shard.stem}.parquet")


def artifact_path(out: str, stage: Stage) -> str:
    return os.path.join(out, "artifacts", f"{stage.instance_name}.json")


def run_local(stages: list[Stage], shards: list[Shard], out: str, columns: dict[str, str],
              progress: Progress, write_kept: bool | None = None) -> dict:
    """Run every segment over every shard; returns per-stage stats merged over the run.

    With ``write_kept`` given, a final segment without a barrier also writes each shard's manifest
    (and kept) file from the rows in memory, before the part that marks the shard done.
    """
    segments = plan_mod.make_plan(stages)
    stats: dict[str, dict] = {}
    input_rows: dict[int, int] = {}
    for k, seg in enumerate(segments):
        for shard in shards:
            path = part_path(out, k, shard)
            if not os.path.exists(path):
                table = _load_input(out, k, shard, columns, stages)
                n_in = table.num_rows
                table, st = plan_mod.run_steps(seg.steps, table)
                if k == 0:
                    st[INPUT_ROWS] = {"rows": n_in}
                outputs.write_json_atomic(st, path + ".stats.json")
                if write_kept is not None and plan_mod.writes_outputs(segments, k):
                    outputs.write_table_outputs(table, shard.stem, out, write_kept)
                outputs.write_parquet_atomic(table, path)
                for name, s in st.items():
                    if name != INPUT_ROWS:
                        progress.report(name, f"shard {shard.stem}", s)
            merge_part_stats(path, shard, stats, input_rows)
        if isinstance(seg.barrier, GlobalStage):
            artifact = _global_barrier(seg.barrier, out, k, shards)
            segments[k + 1].steps[0].artifact = artifact
        elif isinstance(seg.barrier, GroupStage):
            st = _group_barrier(seg.barrier, out, k, shards)
            stats[seg.barrier.instance_name] = stats_mod.merge(stats.get(seg.barrier.instance_name, {}), st)
            progress.report(seg.barrier.instance_name, "all shards", st)
    final = [_final_part(out, len(segments) - 1, s) for s in shards]
    return {"stages": stats, "final_parts": final, "input_rows": input_rows,
            "outputs_in_pass": write_kept is not None and plan_mod.writes_outputs(segments, len(segments) - 1)}


def merge_part_stats(part: str, shard: Shard, stats: dict, input_rows: dict) -> None:
    """Fold a checkpointed part's stats (written beside it) into the run's totals; shared by both runners."""
    with open(part + ".stats.json", encoding="utf-8") as f:
        for name, st in json.load(f).items():
            if name == INPUT_ROWS:
                input_rows[shard.index] = st["rows"]
            else:
                stats[name] = stats_mod.merge(stats.get(name, {}), st)


def _final_part(out: str, k: int, shard: Shard) -> str:
    path = part_path(out, k, shard)
    grouped = path.replace(".parquet", ".grouped.parquet")
    return grouped if os.path.exists(grouped) else path


def _load_input(out: str, k: int, shard: Shard, columns: dict[str, str], stages: list[Stage]) -> pa.Table:
    if k > 0:
        prev = part_path(out, k - 1, shard)
        grouped = prev.replace(".parquet", ".grouped.parquet")
        return pq.read_table(grouped if os.path.exists(grouped) else prev)
    table = ensure_reject_columns(read_shard(shard, columns))
    if stages:
        stages[0].check_columns(table.schema, f"input {shard.path}")
    return table


def _global_barrier(stage: GlobalStage, out: str, k: int, shards: list[Shard]) -> dict:
    path = artifact_path(out, stage)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    parts = [plan_mod.global_partial(stage, pq.read_table(part_path(out, k, s))) for s in shards]
    artifact = stage.finalize(stage.combine(parts))
    save_artifact(stage, artifact, path)
    return artifact


def save_artifact(stage: GlobalStage, artifact: dict, path: str) -> None:
    """Write a barrier's artifact; shared by both runners so their OUT/artifacts/ are the same."""
    write_sidecars = getattr(stage, "write_artifacts", None)
    if write_sidecars is not None:  # optional extra files (e.g. Parquet tables), before the JSON marks completion
        write_sidecars(artifact, os.path.dirname(path))
    outputs.write_json_atomic(artifact, path)


def _group_barrier(stage: GroupStage, out: str, k: int, shards: list[Shard]) -> dict:
    """Group over the whole run (not per shard), then split back per shard."""
    import time

    done = [part_path(out, k, s).replace(".parquet", ".grouped.parquet") for s in shards]
    stats_path = os.path.join(seg_dir(out, k), f"group-{stage.instance_name}.stats.json")
    if all(os.path.exists(p) for p in done) and os.path.exists(stats_path):
        with open(stats_path, encoding="utf-8") as f:
            return json.load(f)
    # Bounded memory: only the columns deciding reads, hash-partitioned on disk (pipeline/local_group.py).
    from pipeline.local_group import group_barrier

    t0 = time.perf_counter()
    st = group_barrier(stage, [part_path(out, k, s) for s in shards], done,
                       os.path.join(seg_dir(out, k), f"group-{stage.instance_name}.tmp"))
    st["seconds"] = time.perf_counter() - t0
    outputs.write_json_atomic(st, stats_path)
    return st

