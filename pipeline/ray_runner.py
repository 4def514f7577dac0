"""The Ray runner: the local runner's plan on Ray Data, streaming, resumable, same manifests.

Each segment is one streaming pass: read the pending shards (the input, or the previous segment's
parts) -> one ``map_batches`` per step (see ``ray_adapter``) -> the last step writes its rows per
input shard (``shard_parts``). Only small metadata rows come back to the driver, which merges the
pieces of shards split across blocks. Global barriers combine the per-block partials saved beside
the parts; group barriers are a second pass with a Ray Data hash shuffle. Parts, stats and
artifacts use the local runner's names under ``OUT/work`` and ``OUT/artifacts``, written
atomically; a rerun skips every shard whose part exists, so an interrupted run resumes.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import outputs, plan as plan_mod, shard_parts
from pipeline import stats as stats_mod
from pipeline.errors import WinnowError
from pipeline.inputs import Shard, read_shard
from pipeline.local_runner import INPUT_ROWS, _final_part, artifact_path, part_path, seg_dir
from pipeline.stats import Progress
from stages.base import GlobalStage, GroupStage, Stage, ensure_reject_columns

PROGRESS_EVERY_S = 2.0


def run_ray(stages: list[Stage], shards: list[Shard], out: str, columns: dict[str, str], progress: Progress,
            address: str | None = None) -> dict:
    """Same contract as ``run_local``: per-stage stats, one final Parquet part per shard, input rows."""
    from pipeline import ray_session

    started = ray_session.connect(address)
    try:
        out = os.path.abspath(out)  # workers may run elsewhere: paths must not depend on their cwd
        cluster = ray_session.cluster_resources()
        segments = plan_mod.make_plan(stages)
        stats: dict[str, dict] = {}
        input_rows: dict[int, int] = {}
        for k, seg in enumerate(segments):
            ray_session.guard(lambda: _segment_pass(k, seg, stages, shards, out, columns, cluster, progress))
            for shard in shards:
                with open(part_path(out, k, shard) + ".stats.json", encoding="utf-8") as f:
                    for name, s in json.load(f).items():
                        if name == INPUT_ROWS:
                            input_rows[shard.index] = s["rows"]
                        else:
                            stats[name] = stats_mod.merge(stats.get(name, {}), s)
            if isinstance(seg.barrier, GlobalStage):
                segments[k + 1].steps[0].artifact = _global_barrier(seg.barrier, out, k, shards)
            elif isinstance(seg.barrier, GroupStage):
                st = ray_session.guard(lambda: _group_pass(k, seg.barrier, shards, out, cluster, progress))
                name = seg.barrier.instance_name
                stats[name] = stats_mod.merge(stats.get(name, {}), st)
        final = [_final_part(out, len(segments) - 1, s) for s in shards]
        return {"stages": stats, "final_parts": final, "input_rows": input_rows}
    finally:
        if started:
            ray_session.shutdown()


# -- one segment -------------------------------------------------------------------------------
def _segment_pass(k: int, seg: plan_mod.Segment, stages: list[Stage], shards: list[Shard], out: str,
                  columns: dict, cluster: dict, progress: Progress) -> None:
    from pipeline import ray_adapter

    spec = shard_parts.PassSpec(
        seg_dir=seg_dir(out, k), block_dir=os.path.join(seg_dir(out, k), "blocks"),
        steps=[(s.stage.instance_name, s.kind) for s in seg.steps],
        partials=isinstance(seg.barrier, GlobalStage), first=k == 0)
    pending = [s for s in shards if not _segment_done(spec, s)]
    if not pending:
        return
    shutil.rmtree(spec.block_dir, ignore_errors=True)  # pieces of an interrupted attempt
    os.makedirs(spec.block_dir, exist_ok=True)
    source = ("input", columns, stages[0] if stages else None) if k == 0 else ("after", out, k - 1)
    ds = _read(pending, source, cluster)
    for j, step in enumerate(seg.steps):
        ds = ray_adapter.map_step(ds, step, j, cluster, spec if j == len(seg.steps) - 1 else None)
    if not seg.steps:
        ds = ray_adapter.write_pass(ds, spec)
    tracker = _Tracker(spec, f"segment {k}", len(pending), progress)
    tracker.consume(ds)
    for shard in pending:  # empty shards yield no rows: give them their (empty) part here
        if shard.index not in tracker.seen:
            table = _load(shard, source)
            if table.num_rows:
                raise WinnowError(f"shard {shard.path}: {table.num_rows} rows went missing in segment {k}")
            steps = copy.deepcopy(seg.steps)  # keep the driver's stages un-setup (they are pickled to workers)
            table, st = plan_mod.run_steps(steps, table)
            shard_parts.write_shard(spec, shard.stem, table, st | ({INPUT_ROWS: {"rows": 0}} if k == 0 else {}),
                                    [] if spec.partials else None)
    shutil.rmtree(spec.block_dir, ignore_errors=True)


def _segment_done(spec: shard_parts.PassSpec, shard: Shard) -> bool:
    if not os.path.exists(spec.part(shard.stem)):
        return False
    return not spec.partials or os.path.exists(shard_parts.partials_path(spec.seg_dir, shard.stem))


def _read(shards: list[Shard], source: tuple, cluster: dict):
    """A dataset of the shards' rows, one read task per shard, bookkeeping columns added."""
    import ray.data

    items = [{"path": s.path, "index": s.index, "format": s.format} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Reading is I/O: it reserves no CPU so the stages' actors can take every core, bounded in number.
    return ds.map_batches(_read_batch, fn_args=(source,), batch_size=1, batch_format="pyarrow", num_cpus=0,
                          compute=ray.data.TaskPoolStrategy(size=max(2, int(cluster.get("CPU", 1)))))


def _read_batch(batch: pa.Table, source: tuple):
    for item in batch.to_pylist():
        shard = Shard(item["path"], item["index"], item["format"])
        table = _load(shard, source)
        if table.num_rows:
            yield shard_parts.add_internal(table, shard.index)


def _load(shard: Shard, source: tuple) -> pa.Table:
    """A shard's rows at the start of a pass: the input itself, a segment's parts, or what follows one."""
    kind, a, b = source
    if kind == "input":
        table = ensure_reject_columns(read_shard(shard, a))
        if b is not None:
            b.check_columns(table.schema, f"input {shard.path}")
        return table
    if kind == "after":
        return pq.read_table(_final_part(a, b, shard))
    return pq.read_table(part_path(a, b, shard))  # "part": a segment's own parts (group pass input)


# -- barriers --------------------------------------------------------------------------------
def _global_barrier(stage: GlobalStage, out: str, k: int, shards: list[Shard]) -> dict:
    """Only the small per-block partials meet on the driver: combine, finalize, save the artifact."""
    path = artifact_path(out, stage)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    parts = [p for s in shards for p in shard_parts.read_partials(seg_dir(out, k), s.stem)]
    artifact = stage.finalize(stage.combine(parts))
    outputs.write_json_atomic(artifact, path)
    return artifact


def _group_pass(k: int, stage: GroupStage, shards: list[Shard], out: str, cluster: dict, progress: Progress) -> dict:
    """Live rows with a key are hash-shuffled by key and decided per group; the rest pass straight through.

    Decisions span shards, so the pass is all or nothing: it is redone unless every grouped part exists.
    """
    from pipeline import ray_adapter

    stats_path = os.path.join(seg_dir(out, k), f"group-{stage.instance_name}.stats.json")
    spec = shard_parts.PassSpec(seg_dir=seg_dir(out, k), block_dir=os.path.join(seg_dir(out, k), "blocks-group"),
                                steps=[(stage.instance_name, "group")], suffix=".grouped.parquet",
                                shard_stats=False)
    if os.path.exists(stats_path) and all(os.path.exists(spec.part(s.stem)) for s in shards):
        with open(stats_path, encoding="utf-8") as f:
            return json.load(f)
    shutil.rmtree(spec.block_dir, ignore_errors=True)
    os.makedirs(spec.block_dir, exist_ok=True)
    source = ("part", out, k)
    key = stage.key_column
    grouped = _read(shards, source, cluster).map_batches(_select, fn_args=(key, True), batch_format="pyarrow",
                                                         num_cpus=0)
    rest = _read(shards, source, cluster).map_batches(_select, fn_args=(key, False), batch_format="pyarrow",
                                                      num_cpus=0)
    decided = ray_adapter.group_step(grouped, stage, cluster, num_partitions=max(1, min(len(shards), 32)))
    ds = ray_adapter.write_pass(decided.union(rest), spec)
    tracker = _Tracker(spec, f"group {stage.instance_name}", len(shards), progress)
    tracker.consume(ds)
    for shard in shards:
        if shard.index not in tracker.seen:
            shard_parts.write_shard(spec, shard.stem, _load(shard, source), None, None)
    st = shard_parts.stage_stats(tracker.total, spec.steps)[stage.instance_name] if tracker.total else \
        {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": 0.0}
    outputs.write_json_atomic(st, stats_path)
    shutil.rmtree(spec.block_dir, ignore_errors=True)
    return st


def _select(batch: pa.Table, key: str, grouped: bool) -> pa.Table:
    """Rows that take part in grouping (live, key set) or, with ``grouped=False``, all the others."""
    import pyarrow.compute as pc

    from stages.base import live_mask

    mask = pc.and_(live_mask(batch), pc.is_valid(batch[key]))
    return batch.filter(mask if grouped else pc.invert(mask))


# -- following a pass --------------------------------------------------------------------------
class _Tracker:
    """Consumes a pass's metadata rows: merges split shards, totals counts, prints progress."""

    def __init__(self, spec: shard_parts.PassSpec, label: str, n_shards: int, progress: Progress):
        self.spec, self.label, self.n_shards, self.progress = spec, label, n_shards, progress
        self.seen: set[int] = set()
        self.pieces: dict[int, list[dict]] = {}
        self.total: dict = {}
        self.done = 0
        self.merges: list = []
        self.t0 = self.last = time.perf_counter()

    def consume(self, ds) -> None:
        import ray

        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                self._add(row)
            if time.perf_counter() - self.last >= PROGRESS_EVERY_S:
                self._report()
        ray.get(self.merges)
        left = {s: sum(p["rows"] for p in ps) for s, ps in self.pieces.items()}
        if left:
            s, rows = next(iter(left.items()))
            raise WinnowError(f"{self.label}: shard {s} produced {rows} of {self.pieces[s][0]['n']} rows")
        self._report()

    def _add(self, row: dict) -> None:
        from pipeline import ray_session

        self.seen.add(row["shard"])
        bs = json.loads(row["stats"])
        self.total = shard_parts.merge_block_stats(self.total, bs)
        if row["done"]:
            self.done += 1
            return
        pieces = self.pieces.setdefault(row["shard"], [])
        pieces.append(row)
        if sum(p["rows"] for p in pieces) < row["n"]:
            return
        del self.pieces[row["shard"]]
        merged: dict = {}
        for p in pieces:
            merged = shard_parts.merge_block_stats(merged, json.loads(p["stats"]))
        shard_stats = shard_parts.stage_stats(merged, self.spec.steps)
        if self.spec.first:
            shard_stats[INPUT_ROWS] = {"rows": row["n"]}
        partials = [p["partial"] for p in pieces] if self.spec.partials else None
        self.merges.append(ray_session.merge_task().remote(
            self.spec, f"{row['shard']:05d}", [p["block"] for p in pieces], shard_stats, partials))
        self.done += 1

    def _report(self) -> None:
        self.last = time.perf_counter()
        if not self.total:
            return
        wall = self.last - self.t0
        for name, st in shard_parts.stage_stats(self.total, self.spec.steps).items():
            if st["rows_in"] or name == self.spec.steps[-1][0]:
                self.progress.report(name, f"{self.label} {self.done}/{self.n_shards}", st | {"seconds": wall})
