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
# Their prefix is reserved: an input column that starts with it is renamed aside when read (inputs.py).
SHARD, ROW, NROWS, LIVE_IN, SEC = "__winnow_shard", "__winnow_row", "__winnow_n", "__winnow_live_in", "__winnow_sec"
INPUT_ROWS = "__input__"  # key of a first-segment part's stats: the shard's input row count
FINGERPRINT = "__fingerprint__"  # key of a piece's stats (and artifact): what produced it (fingerprint.py)
# What a run writes directly under OUT/; `--fresh` removes exactly these, nothing else of the directory.
RUN_FILES = ("work", "manifest", "kept", "artifacts", "exports", "stats.json", "pipeline.json", "report.html")


# -- atomic writes -----------------------------------------------------------------------------
def ensure_writable_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise WinnowError(f"output {path}: not writable ({exc.strerror or exc})") from None


def atomic_write(path: str, write) -> None:
    """``write(tmp)`` then rename onto ``path``. A full or read-only disk is one line naming the path;
    the half-written temp file is removed, so nothing half-written is ever taken for done."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WinnowError(f"output {path}: cannot write ({reason})") from None


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_json_atomic(obj, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)

    atomic_write(path, write)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_bytes_atomic(data: bytes, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


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
    return os.path.exists(part) and read_if_done(part + ".stats.json", fingerprint) is not None


def merge_part_stats(part: str, shard_index: int, stats: dict, input_rows: dict) -> None:
    """Fold a checkpointed part's stats (written beside it) into the run's totals."""
    for name, st in read_json(part + ".stats.json").items():
        if name == INPUT_ROWS:
            input_rows[shard_index] = st["rows"]
        elif name != FINGERPRINT:
            stats[name] = stats_mod.merge(stats.get(name, {}), st)


# -- artifacts and final outputs ---------------------------------------------------------------
def artifact_path(out: str, stage_name: str) -> str:
    return os.path.join(out, "artifacts", f"{stage_name}.json")


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
    folder = os.path.join(out, "artifacts")
    path = artifact_path(out, stage.instance_name)
    if os.path.exists(path):
        os.remove(path)  # not done until rewritten below
    write_json_atomic({FINGERPRINT: fingerprint}, path + ".fingerprint")
    stage.write_artifacts(artifact, lambda table, name: write_parquet_atomic(table, os.path.join(folder, name)))
    write_json_atomic(artifact, path)


def manifest_part(out: str, stem: str) -> str:
    return os.path.join(manifest_dir(out), f"part-{stem}.parquet")


def kept_part(out: str, stem: str) -> str:
    return os.path.join(kept_dir(out), f"part-{stem}.parquet")


def manifest_dir(out: str) -> str:
    return os.path.join(out, "manifest")


def kept_dir(out: str) -> str:
    return os.path.join(out, "kept")


def stats_path(out: str) -> str:
    return os.path.join(out, "stats.json")


def pipeline_record_path(out: str) -> str:
    return os.path.join(out, "pipeline.json")


# -- exports (pipeline/export/) ----------------------------------------------------------------
def export_dir(out: str, output: str | None, fmt: str) -> str:
    """Where an export goes: a relative ``output`` (and the default, ``exports/<format>``) lives under OUT/,
    so ``--fresh`` clears it with the run; an absolute one is taken as it is."""
    output = output or os.path.join("exports", fmt)
    return output if os.path.isabs(output) else os.path.join(out, output)


def wds_shard_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"{index:08d}.tar")


def wds_sizes_path(folder: str) -> str:
    """open_clip reads the sample count from ``sizes.json`` beside the tars; written last (completion marker)."""
    return os.path.join(folder, "sizes.json")


def hf_part_path(folder: str, index: int, count: int) -> str:
    return os.path.join(folder, "data", f"train-{index:05d}-of-{count:05d}.parquet")


def hf_card_path(folder: str) -> str:
    return os.path.join(folder, "README.md")


def subset_path(folder: str) -> str:
    return os.path.join(folder, "subset.npy")


# -- the run as a whole ------------------------------------------------------------------------
def run_record_path(out: str) -> str:
    return os.path.join(out, "work", "run.json")


def has_run_files(out: str) -> bool:
    return any(os.path.exists(os.path.join(out, name)) for name in RUN_FILES)


def clear_run(out: str) -> None:
    """`--fresh`: remove what a run wrote (RUN_FILES), never anything else in the directory."""
    import shutil

    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def prune_outputs(out: str, stems: set[str], write_kept: bool) -> list[str]:
    """Remove manifest/kept files of shards no longer in the input (a resumed run must not carry them),
    and the whole kept set when this run writes none (whether it does is not part of the fingerprint:
    it changes which outputs exist, never a decision)."""
    removed = []
    for path, keep in ((manifest_dir(out), stems), (kept_dir(out), stems if write_kept else set())):
        folder = os.path.basename(path)
        for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
            stem = name[len("part-"):-len(".parquet")] if name.startswith("part-") and name.endswith(".parquet") \
                else None
            if stem not in keep:
                os.remove(os.path.join(path, name))
                removed.append(os.path.join(folder, name))
    return removed


# -- where workers ran (the Ray runner) ---------------------------------------------------------
def workers_dir(out: str) -> str:
    """One small JSON per worker process and stage: where it ran (node, device). Merged into stats.json."""
    return os.path.join(out, "work", "workers")


def record_worker(out: str, stage_name: str, entry: dict) -> None:
    """Written by a worker when it first runs ``stage_name``: ``entry`` is {"node", "node_id", "device"}.
    Named by node and process, so a process that runs the stage again overwrites its own entry."""
    name = f"{stage_name}--{entry.get('node_id', '')[:16]}-{os.getpid()}.json"
    write_json_atomic({"stage": stage_name, **entry}, os.path.join(workers_dir(out), name))


def read_workers(out: str) -> dict[str, list[dict]]:
    """stage name -> the distinct places its workers ran, sorted (node, device, node_id)."""
    found: dict[str, set] = {}
    folder = workers_dir(out)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        try:
            entry = read_json(os.path.join(folder, name))
        except (OSError, ValueError):
            continue
        found.setdefault(entry["stage"], set()).add((entry.get("node", ""), entry.get("device", ""),
                                                     entry.get("node_id", "")))
    return {stage: [{"node": n, "device": d, "node_id": i} for n, d, i in sorted(places)]
            for stage, places in found.items()}
