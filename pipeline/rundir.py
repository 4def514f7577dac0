"""Everything under a run's output directory ``OUT/``, by name, defined once for both runners.

DESIGN.md §5 lists what a run leaves; this module owns where each piece lives and how it is written:
atomic writes through stages/storage.py (a rename locally, one upload on a store, so a retry overwrites
rather than duplicates), the
per-segment checkpoint parts under ``OUT/work/seg-K/`` (the part file is a shard's completion marker,
its stats beside it), barrier artifacts under ``OUT/artifacts/``, and the bookkeeping column names the
runners add to rows while a pass runs. Either runner resumes the other's run directory because both
name everything through here.
"""
from __future__ import annotations

import os
import pickle

import pyarrow as pa

from winnow.pipeline import stats as stats_mod
from winnow.stages import storage
from winnow.stages.context import StageContext

# Bookkeeping columns a runner adds to rows during a pass (stages never see them): the row's input
# shard, its position in the shard, the shard's row count, whether it was live at the pass start, and
# per step j ``SEC + str(j)`` (that step's seconds on the row's batch, spread over the batch's rows).
# Their prefix is reserved: an input column that starts with it is renamed aside when read (inputs.py).
SHARD, ROW, NROWS, LIVE_IN, SEC = "__winnow_shard", "__winnow_row", "__winnow_n", "__winnow_live_in", "__winnow_sec"
INPUT_ROWS = "__input__"  # key of a first-segment part's stats: the shard's input row count
FINGERPRINT = "__fingerprint__"  # key of a piece's stats (and artifact): what produced it (fingerprint.py)
# What a run writes directly under OUT/; `--fresh` removes exactly these, nothing else of the directory.
RUN_FILES = ("work", "manifest", "kept", "artifacts", "exports", "stats.json", "pipeline.json", "report.html")


# -- atomic writes (stages/storage.py: a rename locally, one upload on a store) -------------------------
ensure_writable_dir = storage.ensure_writable
atomic_write = storage.atomic_write
write_bytes_atomic = storage.write_bytes
read_json = storage.read_json


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    storage.write_parquet(table, path)


def write_json_atomic(obj, path: str) -> None:
    storage.write_json(obj, path)


def lock_path(out: str) -> str:
    """Held by the run writing ``out`` (pipeline/runlock.py): pid, host, start time of its process."""
    return storage.join(out, ".winnow.lock")


def stage_context(out: str) -> StageContext:
    """What a stage may use of the run directory (given to it by ``setup``): its path and the writer."""
    return StageContext(run_dir=storage.abspath(out), write_table=write_parquet_atomic)


# -- checkpoints -------------------------------------------------------------------------------
def seg_dir(out: str, k: int) -> str:
    return storage.join(out, "work", f"seg-{k}")


def part_path(out: str, k: int, stem: str) -> str:
    """Segment ``k``'s checkpoint of one input shard (by the shard's stem)."""
    return storage.join(seg_dir(out, k), f"part-{stem}.parquet")


def grouped_path(part: str) -> str:
    """A part after its segment's group barrier (dedup) decided it."""
    return part.replace(".parquet", ".grouped.parquet")


def final_part(out: str, k: int, stem: str) -> str:
    """What segment ``k`` left for a shard: its grouped part when a group barrier followed, else its part."""
    path = part_path(out, k, stem)
    grouped = grouped_path(path)
    return grouped if storage.exists(grouped) else path


def group_stats_path(out: str, k: int, stage_name: str) -> str:
    """Written last by a group barrier: with every grouped part present, the barrier is done."""
    return storage.join(seg_dir(out, k), f"group-{stage_name}.stats.json")


def group_work_dir(out: str, k: int, stage_name: str) -> str:
    return storage.join(seg_dir(out, k), f"group-{stage_name}.tmp")


def partials_path(seg: str, stem: str) -> str:
    return storage.join(seg, f"part-{stem}.partials.pkl")


def read_partials(seg: str, stem: str) -> list:
    return pickle.loads(storage.read_bytes(partials_path(seg, stem)))


def read_if_done(path: str, fingerprint: str) -> dict | None:
    """A piece's JSON record (a part's stats, a group barrier's stats, an artifact) when it exists, parses,
    and was produced by what would produce it now; else None and the piece is redone. A truncated or
    foreign record is not done."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.pop(FINGERPRINT, None) != fingerprint:
        return None
    return record


def part_done(part: str, fingerprint: str) -> bool:
    return storage.exists(part) and read_if_done(part + ".stats.json", fingerprint) is not None


def merge_part_stats(part: str, shard_index: int, stats: dict, input_rows: dict) -> None:
    """Fold a checkpointed part's stats (written beside it) into the run's totals."""
    for name, st in read_json(part + ".stats.json").items():
        if name == INPUT_ROWS:
            input_rows[shard_index] = st["rows"]
        elif name != FINGERPRINT:
            stats[name] = stats_mod.merge(stats.get(name, {}), st)


# -- artifacts and final outputs ---------------------------------------------------------------
def artifact_path(out: str, stage_name: str) -> str:
    return storage.join(out, "artifacts", f"{stage_name}.json")


def load_artifact(out: str, stage_name: str, fingerprint: str) -> dict | None:
    """A barrier's artifact when it exists and was produced by what would produce it now."""
    path = artifact_path(out, stage_name)
    if read_if_done(path + ".fingerprint", fingerprint) is None:
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def save_artifact(stage, artifact: dict, out: str, fingerprint: str) -> None:
    """A barrier's artifact: its fingerprint and the stage's extra files (e.g. Parquet tables) first, the
    JSON that marks the barrier done last. The JSON itself stays the stage's own, comparable across runs."""
    folder = storage.join(out, "artifacts")
    path = artifact_path(out, stage.instance_name)
    storage.remove(path)  # not done until rewritten below
    write_json_atomic({FINGERPRINT: fingerprint}, path + ".fingerprint")
    stage.write_artifacts(artifact, lambda table, name: write_parquet_atomic(table, storage.join(folder, name)))
    write_json_atomic(artifact, path)


def manifest_part(out: str, stem: str) -> str:
    return storage.join(manifest_dir(out), f"part-{stem}.parquet")


def kept_part(out: str, stem: str) -> str:
    return storage.join(kept_dir(out), f"part-{stem}.parquet")


def manifest_dir(out: str) -> str:
    return storage.join(out, "manifest")


def kept_dir(out: str) -> str:
    return storage.join(out, "kept")


def stats_path(out: str) -> str:
    return storage.join(out, "stats.json")


def pipeline_record_path(out: str) -> str:
    return storage.join(out, "pipeline.json")


# -- exports (pipeline/export/) ----------------------------------------------------------------
def export_dir(out: str, output: str | None, fmt: str) -> str:
    """Where an export goes: a relative ``output`` (and the default, ``exports/<format>``) lives under OUT/,
    so ``--fresh`` clears it with the run; an absolute one is taken as it is."""
    output = output or storage.join("exports", fmt)
    return output if storage.isabs(output) else storage.join(out, output)


def wds_shard_path(folder: str, index: int) -> str:
    return storage.join(folder, f"{index:08d}.tar")


def wds_sizes_path(folder: str) -> str:
    """open_clip reads the sample count from ``sizes.json`` beside the tars; written last (completion marker)."""
    return storage.join(folder, "sizes.json")


def hf_part_path(folder: str, index: int, count: int) -> str:
    return storage.join(folder, "data", f"train-{index:05d}-of-{count:05d}.parquet")


def hf_card_path(folder: str) -> str:
    return storage.join(folder, "README.md")


def subset_path(folder: str) -> str:
    return storage.join(folder, "subset.npy")


# -- the run as a whole ------------------------------------------------------------------------
def run_record_path(out: str) -> str:
    return storage.join(out, "work", "run.json")


def has_run_files(out: str) -> bool:
    return any(storage.exists(storage.join(out, name)) for name in RUN_FILES)


def clear_run(out: str) -> None:
    """`--fresh`: remove what a run wrote (RUN_FILES), never anything else in the directory."""
    for name in RUN_FILES:
        path = storage.join(out, name)
        if storage.isdir(path):
            storage.rmtree(path)
        else:
            storage.remove(path)


def prune_outputs(out: str, stems: set[str], write_kept: bool) -> list[str]:
    """Remove manifest/kept files of shards no longer in the input (a resumed run must not carry them),
    and the whole kept set when this run writes none (whether it does is not part of the fingerprint:
    it changes which outputs exist, never a decision)."""
    removed = []
    for path, keep in ((manifest_dir(out), stems), (kept_dir(out), stems if write_kept else set())):
        folder = os.path.basename(path)
        for name in storage.listdir(path):
            stem = name[len("part-"):-len(".parquet")] if name.startswith("part-") and name.endswith(".parquet") \
                else None
            if stem not in keep:
                storage.remove(storage.join(path, name))
                removed.append(storage.join(folder, name))
    return removed


# -- where workers ran (the Ray runner) ---------------------------------------------------------
def workers_dir(out: str) -> str:
    """One small JSON per worker process and stage: where it ran (node, device). Merged into stats.json."""
    return storage.join(out, "work", "workers")


def record_worker(out: str, stage_name: str, entry: dict) -> None:
    """Written by a worker when it first runs ``stage_name``: ``entry`` is {"node", "node_id", "device"}.
    Named by node and process, so a process that runs the stage again overwrites its own entry."""
    name = f"{stage_name}--{entry.get('node_id', '')[:16]}-{os.getpid()}.json"
    write_json_atomic({"stage": stage_name, **entry}, storage.join(workers_dir(out), name))


def read_workers(out: str) -> dict[str, list[dict]]:
    """stage name -> the distinct places its workers ran, sorted (node, device, node_id)."""
    found: dict[str, set] = {}
    folder = workers_dir(out)
    for name in storage.listdir(folder):
        if not name.endswith(".json"):
            continue
        try:
            entry = read_json(storage.join(folder, name))
        except (OSError, ValueError):
            continue
        found.setdefault(entry["stage"], set()).add((entry.get("node", ""), entry.get("device", ""),
                                                     entry.get("node_id", "")))
    return {stage: [{"node": n, "device": d, "node_id": i} for n, d, i in sorted(places)]
            for stage, places in found.items()}
