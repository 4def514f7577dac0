"""The local runner's group barrier in bounded memory: an on-disk hash shuffle of the narrow rows.

When the stage names the columns deciding reads (``decide_columns()``), each shard is first copied
with only those; the passes rewrite these narrow copies, and the full rows (image bytes) are written
once at the end — not once per key (dedup_phash at radius 6 has 7 keys). Per key, in order:

1. **spill**: each shard's live rows that have the key, plus ``__shard``/``__row``, are split by a hash
   of the key into P partition files; P is chosen so a partition holds about ``ROWS_PER_PARTITION`` rows;
2. **decide**: each partition (every row of a key value is in the same one) is decided with
   ``plan.group_live_rows`` and its decided columns are written back per shard;
3. **patch**: each shard's copy gets the decided columns swapped in by ``__row``.

Memory is one partition plus one shard, whatever the run's size; a run small enough for one partition
does exactly what the in-memory barrier did. The Ray runner does the same with Ray Data's shuffle, and
hands a small run (``ray_group.ONE_TASK_ROWS``) to ``decide_narrow`` in one task.
"""
from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline import plan as plan_mod
from winnow.pipeline import rundir
from winnow.pipeline.rundir import ROW, SHARD
from winnow.stages import storage
from winnow.stages.base import GroupStage
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE, live_mask, set_column

ROWS_PER_PARTITION = 2_000_000


def group_barrier(stage: GroupStage, parts: list[str], done: list[str], work: str) -> dict:
    """Decide ``stage`` over every part (one per shard), writing ``done``; returns the stage's counts."""
    storage.rmtree(work)  # leftovers of an interrupted run
    if stage.decide_columns() is None:  # deciding reads whole rows: every pass rewrites them
        n_live = _count_live(parts)
        decide_passes(stage, parts, work, final=done)
        counts = stage_counts(stage, done, n_live)
    else:  # the passes rewrite narrow copies; the full rows (image bytes) are written once, here
        narrow, counts = decide_narrow(stage, parts, work)
        for full, decided, dst in zip(parts, narrow, done):
            apply_columns(full, decided, dst, decided_columns(stage))
    storage.rmtree(work)
    return counts


def decide_narrow(stage: GroupStage, parts: list[str], work: str) -> tuple[list[str], dict]:
    """Every key pass over copies of ``parts`` holding only the columns deciding reads, under ``work``:
    (the decided copies, one per part, same rows in the same order; the stage's counts). The parts are
    not touched. Also the Ray runner's barrier for a run small enough for one task."""
    storage.rmtree(work)  # a retried task must not find the killed one's spill files
    n_live = _count_live(parts)
    narrow = decide_passes(stage, parts, work)
    return narrow, stage_counts(stage, narrow, n_live)


def decided_columns(stage: GroupStage) -> list[str]:
    """The columns a group stage decides (what is swapped into the full rows)."""
    return [REJECT_STAGE, REJECT_REASON, *stage.produces()]


def decide_passes(stage: GroupStage, parts: list[str], work: str, final: list[str] | None = None) -> list[str]:
    """One pass per ``group_keys()``, in order, each over the rows earlier passes left live. Writes the
    whole rows to ``final`` when given; otherwise passes work on narrow copies (the stage must name its
    ``decide_columns()``) and the last pass's copies are returned."""
    keys = stage.group_keys()
    patched = decided_columns(stage)
    wanted = stage.decide_columns()
    if wanted is not None:
        wanted = list(dict.fromkeys(["uid", *keys, *patched, *wanted]))
    n_rows = sum(storage.read_metadata(p).num_rows for p in parts)
    n_parts = max(1, math.ceil(n_rows / ROWS_PER_PARTITION))
    source = parts
    if final is None:
        source = [storage.join(work, "narrow", f"shard-{s}.parquet") for s in range(len(parts))]
        for path, copy in zip(parts, source):
            names = storage.read_schema(path).names
            rundir.write_parquet_atomic(storage.read_parquet(path, columns=[c for c in wanted if c in names]), copy)
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        target = final if last and final is not None else [
            storage.join(work, f"pass-{i}", f"shard-{s}.parquet") for s in range(len(parts))]
        decided_dir = storage.join(work, "decided")
        _decide_pass(stage, key, source, wanted, patched, n_parts, storage.join(work, "spill"), decided_dir)
        for s, (src, dst) in enumerate(zip(source, target)):
            shard_dir = storage.join(decided_dir, f"shard-{s}")
            blocks = ([storage.join(shard_dir, f) for f in (storage.listdir(shard_dir))]
                      if storage.isdir(shard_dir) else [])
            patch_shard(src, dst, blocks, stage.instance_name)
        storage.rmtree(decided_dir)
        if source is not parts:
            storage.rmtree(os.path.dirname(source[0]))
        source = target
    return source


def stage_counts(stage: GroupStage, decided: list[str], n_live: int) -> dict:
    """rows in / kept / rejected by reason for ``stage``, from its decided parts."""
    rejected: Counter = Counter()
    for p in decided:
        t = storage.read_parquet(p, columns=[REJECT_STAGE, REJECT_REASON])
        rejected.update(t.filter(pc.fill_null(pc.equal(t[REJECT_STAGE], stage.instance_name), False))
                        [REJECT_REASON].to_pylist())
    return {"rows_in": n_live, "kept": n_live - sum(rejected.values()), "rejected": dict(sorted(rejected.items()))}


def _count_live(parts: list[str]) -> int:
    return sum(plan_mod.count_live(storage.read_parquet(p, columns=[REJECT_STAGE])) for p in parts)


def _decide_pass(stage: GroupStage, key: str, source: list[str], wanted: list[str] | None, patched: list[str],
                 n_parts: int, spill: str, decided_dir: str) -> None:
    in_memory: list[pa.Table] = []  # one partition: no need to spill
    for s, path in enumerate(source):  # 1. spill live keyed rows, split by key hash
        names = storage.read_schema(path).names
        t = storage.read_parquet(path, columns=None if wanted is None else [c for c in wanted if c in names])
        t = t.append_column(SHARD, pa.array(np.full(t.num_rows, s, np.int32))).append_column(
            ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))
        t = t.filter(pc.and_(live_mask(t), pc.is_valid(t[key])))
        if n_parts == 1:
            in_memory.append(t)
            continue
        part_of = _partition(t[key], n_parts)
        for p in range(n_parts):
            piece = t.filter(pa.array(part_of == p))
            if piece.num_rows:
                rundir.write_parquet_atomic(piece, storage.join(spill, f"part-{p}", f"shard-{s}.parquet"))
    for p in range(n_parts):  # 2. decide each partition, write its decisions per shard
        pdir = storage.join(spill, f"part-{p}")
        if n_parts == 1:
            pieces, in_memory = in_memory, []
        elif storage.isdir(pdir):
            pieces = [storage.read_parquet(storage.join(pdir, f)) for f in (storage.listdir(pdir))]
            storage.rmtree(pdir)
        else:
            continue
        table = pa.concat_tables(pieces, promote_options="permissive")
        del pieces
        if table.num_rows == 0:
            continue
        decided = plan_mod.group_live_rows(stage, table, key)
        decided = decided.select([c for c in [SHARD, ROW, *patched] if c in decided.column_names])
        for s in np.unique(decided[SHARD].to_numpy()):
            mine = decided.filter(pc.equal(decided[SHARD], int(s)))
            rundir.write_parquet_atomic(mine, storage.join(decided_dir, f"shard-{s}", f"part-{p}.parquet"))
    storage.rmtree(spill)


def _partition(keys: pa.ChunkedArray, n_parts: int) -> np.ndarray:
    """Partition index per row from a hash of its key (every row of a key value lands in one partition)."""
    if n_parts == 1:
        return np.zeros(len(keys), np.int64)
    import pandas as pd

    values = keys.to_numpy(zero_copy_only=False)
    if values.dtype == object:
        values = np.asarray(values, dtype=object)
    return (pd.util.hash_array(values) % np.uint64(n_parts)).astype(np.int64)


def patch_shard(source: str, target: str, blocks: list[str], stage_name: str,
                columns: list[str] | None = None) -> dict:
    """A group pass's decided rows (``__row`` + the columns that travelled) put back into the shard's
    rows from ``source`` (``columns`` of them, or all); returns the pass's counts for the shard (the
    local runner's definition)."""
    full = storage.read_parquet(source, columns=columns)
    live_before = plan_mod.count_live(full)
    if blocks:
        decided = pa.concat_tables([storage.read_parquet(p) for p in blocks], promote_options="permissive")
        index = np.arange(full.num_rows)
        index[decided[ROW].to_numpy()] = full.num_rows + np.arange(decided.num_rows)
        index = pa.array(index)
        for name in decided.column_names:
            if name != ROW and name in full.column_names:
                old = full[name].combine_chunks()
                new = pa.concat_arrays([old, decided[name].cast(old.type).combine_chunks()]).take(index)
                full = full.set_column(full.schema.get_field_index(name), name, new)
    rundir.write_parquet_atomic(full, target)
    for p in blocks:
        storage.remove(p)
    mask = pc.fill_null(pc.equal(full[REJECT_STAGE], stage_name), False)
    rejected = Counter(full.filter(mask)[REJECT_REASON].to_pylist())
    return {"rows_in": live_before, "kept": live_before - sum(rejected.values()),
            "rejected": dict(sorted(rejected.items())), "seconds": 0.0}


def apply_columns(full_path: str, narrow_path: str, target: str, columns: list[str]) -> None:
    """The shard's full rows with ``columns`` taken from its narrow decided copy (same rows, same order)."""
    full, narrow = storage.read_parquet(full_path), storage.read_parquet(narrow_path)
    for name in columns:
        if name in narrow.column_names:
            values = narrow[name]
            if name in full.column_names:
                values = values.cast(full.schema.field(name).type)
            full = set_column(full, name, values)
    rundir.write_parquet_atomic(full, target)
