"""Everything under a run's output directory ``OUT/``, by name, defined once for both runners.

DESIGN.md §5 lists what a run leaves; this module owns where each piece lives and how it is written:
atomic writes (a temp name, then a rename, so a retry overwrites rather than duplicates), the
per-segment checkpoint parts under ``OUT/work/seg-K/`` (the part file is a shard's completion marker,
its stats beside it), barrier artifacts under ``OUT/artifacts/``, and the bookkeeping column names the
runners add to rows while a pass runs. Either runner resumes the other's run directory because both
name everything through here.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.pipeline import stats as stats_mod
from winnow.stages.context import StageContext
from winnow.stages.errors import WinnowError

# Bookkeeping columns a runner adds to rows during a pass (stages never see them): the row's input
# shard, its position in the shard, the shard's row count, whether it was live at the pass start, and
# per step j ``SEC + str(j)`` (that step's seconds on the row's batch, spread over the batch's rows).
SHARD, ROW, NROWS, LIVE_IN, SEC = "__shard", "__row", "__n", "__live_in", "__sec"
INPUT_ROWS = "__input__"  # key of a first-segment part's stats: the shard's input row count


# -- atomic writes -----------------------------------------------------------------------------
def ensure_writable_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise WinnowError(f"output {path}: not writable ({exc.strerror or exc})") from None


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_bytes_atomic(data: bytes, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def lock_path(out: str) -> str:
    """Held by the run writing ``out`` (pipeline/runlock.py): pid, host, start time of its process."""
    return os.path.join(out, ".winnow.lock")


def stage_context(out: str) -> StageContext:
    """What a stage may use of the run directory (given to it by ``setup``): its path and the writer."""
    return StageContext(run_dir=os.path.abspath(out), write_table=write_parquet_atomic)


# -- checkpoints -------------------------------------------------------------------------------
def seg_dir(out: str, k: int) -> str:
    return os.path.join(out, "work", f"seg-{k}")


def part_path(out: str, k: int, stem: str) -> str:
    """Segment ``k``'s checkpoint of one input shard (by the shard's stem)."""
    return os.path.join(seg_dir(out, k), f"part-{stem}.parquet")


def grouped_path(part: str) -> str:
    """A part after its segment's group barrier (dedup) decided it."""
    return part.replace(".parquet", ".grouped.parquet")


def final_part(out: str, k: int, stem: str) -> str:
    """What segment ``k`` left for a shard: its grouped part when a group barrier followed, else its part."""
    path = part_path(out, k, stem)
    grouped = grouped_path(path)
    return grouped if os.path.exists(grouped) else path


def group_stats_path(out: str, k: int, stage_name: str) -> str:
    """Written last by a group barrier: with every grouped part present, the barrier is done."""
    return os.path.join(seg_dir(out, k), f"group-{stage_name}.stats.json")


def group_work_dir(out: str, k: int, stage_name: str) -> str:
    return os.path.join(seg_dir(out, k), f"group-{stage_name}.tmp")


def partials_path(seg: str, stem: str) -> str:
    return os.path.join(seg, f"part-{stem}.partials.pkl")


def read_partials(seg: str, stem: str) -> list:
    with open(partials_path(seg, stem), "rb") as f:
        return pickle.load(f)


def merge_part_stats(part: str, shard_index: int, stats: dict, input_rows: dict) -> None:
    """Fold a checkpointed part's stats (written beside it) into the run's totals."""
    for name, st in read_json(part + ".stats.json").items():
        if name == INPUT_ROWS:
            input_rows[shard_index] = st["rows"]
        else:
            stats[name] = stats_mod.merge(stats.get(name, {}), st)


# -- artifacts and final outputs ---------------------------------------------------------------
def artifact_path(out: str, stage_name: str) -> str:
    return os.path.join(out, "artifacts", f"{stage_name}.json")


def load_artifact(out: str, stage_name: str) -> dict | None:
    path = artifact_path(out, stage_name)
    return read_json(path) if os.path.exists(path) else None


def save_artifact(stage, artifact: dict, out: str) -> None:
    """A barrier's artifact: the stage's extra files (e.g. Parquet tables) first, the JSON that marks
    the barrier done last."""
    folder = os.path.join(out, "artifacts")
    stage.write_artifacts(artifact, lambda table, name: write_parquet_atomic(table, os.path.join(folder, name)))
    write_json_atomic(artifact, artifact_path(out, stage.instance_name))


def manifest_part(out: str, stem: str) -> str:
    return os.path.join(out, "manifest", f"part-{stem}.parquet")


def kept_part(out: str, stem: str) -> str:
    return os.path.join(out, "kept", f"part-{stem}.parquet")
