"""A group barrier on Ray (dedup): rows sharing a key are decided together after a hash shuffle.

Per key of the stage (``group_keys()``, one pass each, in order): the live rows that have a key are
read — only the columns deciding needs when the stage names them (``decide_columns()``), so image
bytes stay where they are — shuffled with ``groupby(key).map_groups`` and decided per group with the
local runner's own ``group_live_rows``; the decided rows come back as pieces that a task per shard
patches into the shard's full rows. Rows without a key never travel; nothing comes to the driver.
A run of at most ``ONE_TASK_ROWS`` rows skips the shuffles: one task runs the local runner's barrier
(``groups.decide_narrow``) over narrow copies, and a task per shard swaps the decisions in.
Decisions span shards, so the barrier is all or nothing: it is redone unless every grouped part and
its stats exist.
"""
from __future__ import annotations

import time

from winnow.pipeline import groups, rundir
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.inputs import Shard
from winnow.pipeline.rundir import part_path, seg_dir
from winnow.pipeline.runners.ray_data import adapter, blocks, session
from winnow.pipeline.runners.ray_data.tracker import Tracker
from winnow.pipeline.stats import Progress
from winnow.stages import storage
from winnow.stages.base import GroupStage

MAX_PARTITIONS = 32
# Runs up to this size are decided in a single task: a Ray Data shuffle costs ~2.5 s of fixed time per key
# (dedup_phash has 7), while one core decides 250k rows in seconds (SemDeDup, the costliest, ~30 us/row:
# ~7 s); beyond it the shuffles spread the deciding over the cluster.
ONE_TASK_ROWS = 250_000


def group_pass(k: int, stage: GroupStage, shards: list[Shard], out: str, cluster: dict, progress: Progress,
               fingerprint: str) -> dict:
    """Decide ``stage`` over every shard of segment ``k``; returns its stats (as the local runner counts)."""
    import ray

    name = stage.instance_name
    stats_path = rundir.group_stats_path(out, k, name)
    full = [part_path(out, k, s.stem) for s in shards]
    grouped = [rundir.grouped_path(p) for p in full]
    previous = rundir.read_if_done(stats_path, fingerprint)
    if previous is not None and all(storage.exists(p) for p in grouped):
        return previous
    keys = stage.group_keys()
    wanted = stage.decide_columns()
    if wanted is not None:
        wanted = list(dict.fromkeys(["uid", *keys, *groups.decided_columns(stage), *wanted]))
    block_dir = storage.join(seg_dir(out, k), "blocks-group")
    columns = _present(wanted, full)
    patch = session.remote_task(groups.patch_shard)
    t0 = time.perf_counter()
    totals: dict = {}
    source = full
    one_task = columns is not None and _num_rows(full) <= ONE_TASK_ROWS
    if one_task:
        # every key decided in one task with the local runner's code, over narrow copies: for a run this
        # small that beats one Ray Data shuffle per key (~2.5 s of fixed cost each; dedup_phash: 7 keys)
        work = rundir.group_work_dir(out, k, name)
        source, totals = ray.get(session.remote_task(groups.decide_narrow).remote(stage, full, work))
    for i, key in enumerate(keys if not one_task else []):
        # With named columns every pass reads and writes only those (a narrow copy of each shard): the
        # image bytes are rewritten once, at the end, not once per key.
        last = i == len(keys) - 1
        target = grouped if last and columns is None else [p.replace(".parquet", f".grouped-{i}.parquet") for p in full]
        storage.rmtree(block_dir)
        storage.makedirs(block_dir)
        spec = blocks.PassSpec(seg_dir=seg_dir(out, k), block_dir=block_dir, steps=[(name, "group")],
                                    whole_shards=False, shard_stats=False)
        items = [Shard(p, s.index, "parquet") for p, s in zip(source, shards)]
        ds = adapter.read_dataset(items, ("keyed", key, columns), cluster)
        ds = adapter.group_step(ds, stage, cluster, key, max(1, min(len(shards), MAX_PARTITIONS)))
        tracker = Tracker(spec, f"group {name}" + (f" key {key}" if len(keys) > 1 else ""), len(shards),
                          progress, merge=False)
        tracker.consume(adapter.write_pass(ds, spec))
        per_shard = ray.get([patch.remote(src, dst, [p["block"] for p in tracker.pieces.get(s.index, [])], name,
                                          columns) for src, dst, s in zip(source, target, shards)])
        if source is not full:  # the previous pass's narrow copies
            for p in source:
                storage.remove(p)
        st: dict = {}
        for one in per_shard:
            st = stats_mod.merge(st, one)
        if i > 0:  # rows in: live before the first key; rejected: all this stage's, after the last
            st = {**st, "rows_in": totals["rows_in"], "kept": totals["rows_in"] - sum(st["rejected"].values())}
        totals = st
        source = target
    if columns is not None:  # decisions into the full rows, once
        decided = groups.decided_columns(stage)
        apply = session.remote_task(groups.apply_columns)
        ray.get([apply.remote(f, n, g, decided) for f, n, g in zip(full, source, grouped)])
        for p in source:
            storage.remove(p)
    storage.rmtree(block_dir)
    if one_task:
        storage.rmtree(work)
    totals["seconds"] = time.perf_counter() - t0
    rundir.write_json_atomic({rundir.FINGERPRINT: fingerprint, **totals}, stats_path)
    progress.report(name, "group, all shards", totals)
    return totals


def _num_rows(paths: list[str]) -> int:
    return sum(storage.read_metadata(p).num_rows for p in paths)


def _present(wanted: list[str] | None, paths: list[str]) -> list[str] | None:
    """The wanted columns that the parts have (a produced column may be absent when no row was live)."""
    if wanted is None or not paths:
        return wanted
    names = set(storage.read_schema(paths[0]).names)
    return [c for c in wanted if c in names]
