"""The only place that knows how a Stage becomes Ray Data (DESIGN.md §4).

A map/prepare/apply step is one ``map_batches`` on pyarrow batches with the stage's batch size and
``num_cpus``/``num_gpus`` from its ``Resources``: stateless CPU stages run as tasks, stages that load
something in ``setup()`` (``stateful``) or use GPUs run in an autoscaling actor pool, so the model
loads once per actor. A group stage is ``groupby(key).map_groups``. Stages see only their own
columns: the runner's bookkeeping columns are taken off before and put back after every call.
"""
from __future__ import annotations

import dataclasses
import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline import plan as plan_mod
from winnow.pipeline import rowrefs, rundir
from winnow.pipeline.inputs import Shard, read_shard
from winnow.pipeline.plan import Step
from winnow.pipeline.runners.ray_data import blocks, session
from winnow.stages import storage
from winnow.stages.base import GroupStage, Resources, Stage
from winnow.stages.columns import ensure_reject_columns, live_mask
from winnow.stages.context import StageContext
from winnow.stages.errors import WinnowError

_RECORDED: set = set()  # (run dir, stage) this worker process has recorded its place for
_NODE_IPS: dict = {}  # node id -> IP, as the GCS knows them (looked up once per worker process)


class StepRunner:
    """Runs one step on a batch; the last step of a pass also writes the pass's output (``spec``)."""

    def __init__(self, step: Step, index: int, spec: blocks.PassSpec | None = None):
        self.step, self.index, self.spec = step, index, spec
        self.stage, self.context = step.stage, step.context
        self.storage = storage.current()  # the driver's store settings, applied where this runs

    def __call__(self, batch: pa.Table) -> pa.Table:
        storage.apply(self.storage)
        record_place(self.context, self.stage.instance_name)
        view, internal = blocks.split_internal(batch)
        t0 = time.perf_counter()
        size = max(1, self.step.stage.batch_size)
        # counts are derived from the rows at the end of the pass; the stage sees at most batch_size rows
        outs = [self.step.run(view.slice(i, size))[0] for i in range(0, view.num_rows, size)]
        outs = outs or [self.step.run(view)[0]]
        out = outs[0] if len(outs) == 1 else pa.concat_tables(outs, promote_options="permissive")
        out = blocks.add_seconds(blocks.join_internal(out, internal), self.index,
                                      time.perf_counter() - t0)
        if self.spec is None:
            return out
        return blocks.write_block(out, self.spec, self.step.stage if self.spec.partials else None)


class GroupRunner:
    """Decides one key group (all its live rows, across shards) with the local runner's logic."""

    def __init__(self, stage: GroupStage, key: str, context: StageContext | None = None):
        self.stage, self.key, self.context = stage, key, context
        self.storage = storage.current()

    def __call__(self, group: pa.Table) -> pa.Table:
        storage.apply(self.storage)
        record_place(self.context, self.stage.instance_name)
        view, internal = blocks.split_internal(group)
        t0 = time.perf_counter()
        out = plan_mod.group_live_rows(self.stage, view, self.key)
        return blocks.add_seconds(blocks.join_internal(out, internal), 0, time.perf_counter() - t0)


class _ActorCall:
    """Actor-pool worker: checks it got the GPUs it was placed for, sets the stage up once (its context
    says how many GPUs it was given and on which node), records where it runs, then serves batches."""

    def __init__(self, runner, gpus: float = 0.0):
        place = worker_place()
        name = runner.stage.instance_name
        where = f"{place['node']} (node {place['node_id'][:12]})"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpus > 0 and (place["device"] == "cpu" or visible == ""):
            raise WinnowError(f"stage '{name}' was given {gpus:g} GPU on node {where} but Ray assigned this "
                              f"worker none (CUDA_VISIBLE_DEVICES={visible!r}); check the node's --num-gpus")
        context = dataclasses.replace(runner.context or StageContext(), gpus=gpus, node=where)
        storage.apply(runner.storage)  # setup may read side data (embeddings, eval sets) from a store
        runner.stage.ensure_setup(context)
        record_place(runner.context, name, place)
        self.runner = runner

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)


def worker_place() -> dict:
    """Where this Ray worker runs: node IP, node id, and its GPUs as Ray assigned them ("gpu:0") or "cpu"."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    gpu_ids = ray.get_gpu_ids()
    return {"node": _node_ip(node_id), "node_id": node_id,
            "device": ",".join(f"gpu:{g}" for g in gpu_ids) if gpu_ids else "cpu"}


def _node_ip(node_id: str) -> str:
    """The address the node registered with the GCS (``ray start --node-ip-address``); a worker's own
    ``ray.util.get_node_ip_address()`` is the host's default route, which differs on multi-homed hosts."""
    import ray

    if node_id not in _NODE_IPS:
        _NODE_IPS.update({n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()})
    return _NODE_IPS.get(node_id) or ray.util.get_node_ip_address()


def record_place(context: StageContext | None, stage_name: str, place: dict | None = None) -> None:
    """Once per worker process and stage: note where it runs under the run directory (stats.json's workers)."""
    run_dir = context.run_dir if context is not None else None
    if run_dir is None or (run_dir, stage_name) in _RECORDED:
        return
    rundir.record_worker(run_dir, stage_name, place or worker_place())
    _RECORDED.add((run_dir, stage_name))


def gpus_available(cluster: dict) -> float:
    """GPUs the cluster has now or could get: the most its autoscaler's node types add (session.SCALABLE_GPU)."""
    return max(float(cluster.get("GPU", 0) or 0), float(cluster.get(session.SCALABLE_GPU, 0) or 0))


def resources(stage: Stage, cluster: dict) -> Resources:
    """The stage's resources with ``gpus=None`` ("a GPU per worker when there is one") resolved against
    the cluster (its GPUs now, or a GPU node type its autoscaler can add), never against the host that
    parsed the pipeline."""
    res = stage.resources
    if res.gpus is None:
        return Resources(cpus=res.cpus, gpus=1.0 if gpus_available(cluster) else 0.0)
    return res


def uses_actors(stage: Stage) -> bool:
    """Actor pool (setup once per worker) for stages that load something or may use a GPU."""
    return bool(stage.stateful or stage.resources.gpus != 0)


def cpus_needed(steps: list[Step]) -> float:
    """CPUs a segment needs to hold all its operators at once: every actor pool's first actor plus
    the largest task. An embedded Ray gets at least this many logical CPUs, or it would wait forever."""
    actors = sum(s.stage.resources.cpus for s in steps if uses_actors(s.stage))
    tasks = max([s.stage.resources.cpus for s in steps if not uses_actors(s.stage)], default=0.0)
    return actors + tasks


def pool_size(stage: Stage, cluster: dict) -> int:
    """Most actors the cluster can hold for this stage (its GPUs or its CPUs bound it)."""
    res = resources(stage, cluster)
    if res.gpus > 0:
        return max(1, int(gpus_available(cluster) // res.gpus))
    return max(1, int(cluster.get("CPU", 1) // max(res.cpus, 0.01)))


def read_args(first: Stage | None, cluster: dict, n_shards: int) -> dict:
    """Resources of a pass's shard reads. Before a CPU stage they are that stage's own (its CPUs, a task pool
    as large as its actor pool), so Ray Data fuses the read into the stage's operator: a shard is read where
    it is processed and written, and its rows never cross the object store (on 2 cores that copy cost as
    much as the work). Otherwise reading is I/O: no CPU reserved, so actors can take every core, bounded."""
    from ray.data import TaskPoolStrategy

    if first is not None and resources(first, cluster).gpus == 0:
        size = pool_size(first, cluster) if uses_actors(first) else None
        return {"num_cpus": first.resources.cpus, "compute": TaskPoolStrategy(size=size)}
    return {"num_cpus": 0, "compute": TaskPoolStrategy(size=min(n_shards, max(2, int(cluster.get("CPU", 1)))))}


def _ray_args(stage: Stage, cluster: dict, runner) -> dict:
    from ray.data import ActorPoolStrategy

    res = resources(stage, cluster)
    args = {"batch_format": "pyarrow", "num_cpus": res.cpus, "zero_copy_batch": True}
    if res.gpus > 0:
        args["num_gpus"] = res.gpus
    if uses_actors(stage):
        # a class per stage instance, so Ray's logs and stats name the stage
        cls = type(f"Stage_{stage.instance_name}", (_ActorCall,), {})
        args.update(fn=cls, fn_constructor_args=(runner, res.gpus),
                    compute=ActorPoolStrategy(min_size=1, max_size=pool_size(stage, cluster)))
    else:
        def run_task(batch, runner):
            return runner(batch)

        run_task.__name__ = run_task.__qualname__ = f"stage_{stage.instance_name}"
        args.update(fn=run_task, fn_args=(runner,))
    return args


def map_step(ds, step: Step, index: int, cluster: dict, spec: blocks.PassSpec | None = None):
    """``ds`` with ``step`` applied (and the pass written, when ``spec`` is given).

    CPU stages take whole blocks (a shard, or a piece of one up to Ray Data's block size) and see
    them in slices of their batch size: blocks stay aligned with shards, so most shards are written
    whole where they are, with no batch assembled from several blocks. GPU stages get Ray Data batches
    of exactly their batch size (Ray Data requires it, and prefetches them).
    """
    args = _ray_args(step.stage, cluster, StepRunner(step, index, spec))
    fn = args.pop("fn")
    batch_size = step.stage.batch_size if resources(step.stage, cluster).gpus > 0 else None
    return ds.map_batches(fn, batch_size=batch_size, **args)


def group_step(ds, stage: GroupStage, cluster: dict, key: str, num_partitions: int,
               context: StageContext | None = None):
    """Rows sharing ``key`` meet in one call (Ray Data hash shuffle), wherever they came from."""
    args = _ray_args(stage, cluster, GroupRunner(stage, key, context))
    fn = args.pop("fn")
    return ds.groupby(key, num_partitions=num_partitions).map_groups(fn, **args)


def write_pass(ds, spec: blocks.PassSpec):
    """A standalone writer (a group pass has no step of its own to carry it): I/O only, no CPU reserved."""

    def write_pass_output(batch, spec, settings):
        storage.apply(settings)
        return blocks.write_block(batch, spec)

    return ds.map_batches(write_pass_output, fn_args=(spec, storage.current()), batch_size=None,
                          batch_format="pyarrow", num_cpus=0)


# -- reading ------------------------------------------------------------------------------------
def read_dataset(shards: list[Shard], source: tuple, cluster: dict, first: Stage | None = None):
    """A dataset of the shards' rows, one read task per shard, bookkeeping columns added.

    Its resources come from ``read_args`` (fused into the pass's first CPU stage when there is one).
    """
    import ray.data

    items = [{"path": s.path, "index": s.index, "format": s.format, "key": s.key, "name": s.name} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(_read_batch, fn_args=(source, storage.current()), batch_size=1, batch_format="pyarrow",
                          **read_args(first, cluster, len(items)))


def _read_batch(batch: pa.Table, source: tuple, settings: storage.Settings):
    storage.apply(settings)
    for item in batch.to_pylist():
        shard = Shard(item["path"], item["index"], item["format"], item["key"], item["name"])
        if source[0] == "keyed":  # a group pass: only live rows with a key travel, only the columns it reads
            _, key, columns = source
            table = blocks.add_internal(storage.read_parquet(shard.path, columns=columns), shard.index)
            table = table.filter(pc.and_(table[blocks.LIVE_IN], pc.is_valid(table[key])))
        else:
            table = blocks.add_internal(load_shard(shard, source), shard.index)
        if table.num_rows:
            yield table


def load_shard(shard: Shard, source: tuple) -> pa.Table:
    """A shard's rows at the start of a pass: the input itself, a segment's parts, or what follows one."""
    if source[0] == "input":
        _, columns, first = source
        table = ensure_reject_columns(read_shard(shard, columns))
        if first is not None:
            first.check_columns(table.schema, f"input {shard.path}")
        return table
    if source[0] == "after":  # with a column mapping when the segment's steps read the input's image bytes
        _, out, k, attach_columns = source
        table = storage.read_parquet(rundir.final_part(out, k, shard.stem))
        return table if attach_columns is None else rowrefs.attach(table, shard, attach_columns, live_mask(table))
    raise ValueError(source[0])
