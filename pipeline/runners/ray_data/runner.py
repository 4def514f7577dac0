"""The Ray runner: the local runner's plan on Ray Data, streaming, resumable, same manifests.

Each segment is one streaming pass: read the pending shards (the input, or the previous segment's
parts) -> one ``map_batches`` per step (see ``adapter``) -> the last step writes its rows per
input shard (``blocks``). Only small metadata rows come back to the driver, which merges the
pieces of shards split across blocks. Global barriers combine the per-block partials saved beside
the parts; group barriers are a second pass with a Ray Data hash shuffle. Parts, stats and
artifacts use the local runner's names under ``OUT/work`` and ``OUT/artifacts``, written
atomically; a rerun skips every shard whose part exists, so an interrupted run resumes.
"""
from __future__ import annotations

import copy
import sys

from winnow.pipeline import plan as plan_mod
from winnow.pipeline import rowrefs, rundir
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.fingerprint import RunFingerprints
from winnow.pipeline.inputs import Shard
from winnow.pipeline.rundir import INPUT_ROWS, part_path, seg_dir
from winnow.pipeline.runners.ray_data import adapter, blocks, session
from winnow.pipeline.runners.ray_data.group import group_pass
from winnow.pipeline.runners.ray_data.tracker import Tracker
from winnow.pipeline.stats import Progress
from winnow.stages import storage
from winnow.stages.base import GlobalStage, GroupStage, Stage
from winnow.stages.errors import WinnowError


def run_ray(stages: list[Stage], shards: list[Shard], out: str, columns: dict[str, str], progress: Progress,
            fingerprints: RunFingerprints, address: str | None = None, write_kept: bool | None = None) -> dict:
    """Same contract as ``run_local``: per-stage stats, one final Parquet part per shard, input rows.

    With ``write_kept`` given, a final segment without a barrier also writes each shard's manifest (and
    kept) file where the shard is processed, so the driver never reads the rows back.
    """
    out = storage.abspath(out)  # workers may run elsewhere: paths must not depend on their cwd
    segments = plan_mod.make_plan(stages, rundir.stage_context(out))
    images = rowrefs.plan_images(segments)  # parts hold no input image bytes (pipeline/rowrefs.py)
    started = session.connect(address, min_cpus=max(adapter.cpus_needed(s.steps) for s in segments))
    try:
        cluster = session.cluster_resources()
        _check_gpus(stages, cluster, embedded=started and not address, remote=bool(address))
        stats: dict[str, dict] = {}
        input_rows: dict[int, int] = {}
        for k, seg in enumerate(segments):
            final_outputs = (out, write_kept) if write_kept is not None and plan_mod.writes_outputs(segments, k) \
                else None
            session.guard(lambda: _segment_pass(k, seg, stages, shards, out, columns, cluster, progress,
                                                fingerprints, images, final_outputs))
            for shard in shards:
                rundir.merge_part_stats(part_path(out, k, shard.stem), shard.index, stats, input_rows)
            if isinstance(seg.barrier, GlobalStage):
                segments[k + 1].steps[0].artifact = _global_barrier(seg.barrier, out, k, shards,
                                                                    fingerprints.barrier(k))
            elif isinstance(seg.barrier, GroupStage):
                st = session.guard(lambda: group_pass(k, seg.barrier, shards, out, cluster, progress,
                                                      fingerprints.barrier(k)))
                name = seg.barrier.instance_name
                stats[name] = stats_mod.merge(stats.get(name, {}), st)
        for name, places in rundir.read_workers(out).items():  # where each stage's workers ran
            if name in stats:
                stats[name]["workers"] = places
        final = [rundir.final_part(out, len(segments) - 1, s.stem) for s in shards]
        return {"stages": stats, "final_parts": final, "input_rows": input_rows,
                "outputs_in_pass": write_kept is not None and plan_mod.writes_outputs(segments, len(segments) - 1)}
    finally:
        if started:
            session.shutdown()


def _check_gpus(stages: list[Stage], cluster: dict, embedded: bool, remote: bool = False) -> None:
    """Stages that asked for GPUs against what the cluster has or its autoscaler can add; ``gpus: null``
    stages are told when they run on CPU workers of a cluster (docs/ray.md, "GPUs")."""
    needy = [s.instance_name for s in stages if (s.resources.gpus or 0) > 0]
    if needy and not cluster.get("GPU"):
        if embedded:
            raise WinnowError(f"stage '{needy[0]}' needs a GPU and this machine has none visible to Ray; "
                              "run it on a cluster with GPU workers (--address) or pick a CPU setting")
        if cluster.get(session.SCALABLE_GPU):
            print(f"winnow: stage '{needy[0]}' needs a GPU and the cluster has none yet; it waits for the "
                  "autoscaler to start a GPU node", file=sys.stderr)
        elif cluster.get(session.AUTOSCALER):
            print(f"winnow: warning: stage '{needy[0]}' needs a GPU and the cluster has none yet; it waits for "
                  "the autoscaler to add a GPU worker (it does not say whether it has a GPU node type)",
                  file=sys.stderr)
        else:
            raise WinnowError(f"stage '{needy[0]}' needs a GPU per worker and the cluster has no GPU node and "
                              "no autoscaler to add one; add a GPU node or set gpus: null (or 0) to run on CPU")
    auto = [s.instance_name for s in stages if s.resources.gpus is None]
    if auto and remote and not adapter.gpus_available(cluster):
        print(f"winnow: warning: stage '{auto[0]}' runs on CPU workers: the cluster has no GPU now and "
              "no autoscaler GPU node type it knows of (gpus: 1 makes it wait for one)", file=sys.stderr)
    elif auto and not cluster.get("GPU") and cluster.get(session.SCALABLE_GPU):
        print(f"winnow: stage '{auto[0]}' takes 1 GPU per worker: the autoscaler has a GPU node type; "
              "it waits for one to start", file=sys.stderr)


# -- one segment -------------------------------------------------------------------------------
def _segment_pass(k: int, seg: plan_mod.Segment, stages: list[Stage], shards: list[Shard], out: str,
                  columns: dict, cluster: dict, progress: Progress, fingerprints: RunFingerprints,
                  images: rowrefs.ImagePlan, final_outputs: tuple | None = None) -> None:
    kept_inputs = {s.index: (s, columns) for s in shards} if final_outputs and images.kept_from_input() else None
    spec = blocks.PassSpec(
        seg_dir=seg_dir(out, k), block_dir=storage.join(seg_dir(out, k), "blocks"),
        steps=[(s.stage.instance_name, s.kind) for s in seg.steps],
        partials=isinstance(seg.barrier, GlobalStage), first=k == 0, final_outputs=final_outputs,
        stems={s.index: s.stem for s in shards}, fingerprints={s.index: fingerprints.part(k, s.index) for s in shards},
        drop_image=not images.keep[k], kept_inputs=kept_inputs)
    pending = [s for s in shards if not _segment_done(spec, s)]
    if not pending:
        return
    storage.rmtree(spec.block_dir)  # pieces of an interrupted attempt
    storage.makedirs(spec.block_dir)
    source = (("input", columns, stages[0] if stages else None) if k == 0
              else ("after", out, k - 1, columns if images.attach_at_start(k) else None))
    ds = adapter.read_dataset(pending, source, cluster, seg.steps[0].stage if seg.steps else None)
    for j, step in enumerate(seg.steps):
        ds = adapter.map_step(ds, step, j, cluster, spec if j == len(seg.steps) - 1 else None)
    if not seg.steps:
        ds = adapter.write_pass(ds, spec)
    tracker = Tracker(spec, f"segment {k}", len(pending), progress)
    tracker.consume(ds)
    for shard in pending:  # empty shards yield no rows: give them their (empty) part here
        if shard.index not in tracker.seen:
            table = adapter.load_shard(shard, source)
            if table.num_rows:
                raise WinnowError(f"shard {shard.path}: {table.num_rows} rows went missing in segment {k}")
            steps = copy.deepcopy(seg.steps)  # keep the driver's stages un-setup (they are pickled to workers)
            table, st = plan_mod.run_steps(steps, table)
            blocks.write_shard(spec, shard.index, table, st | ({INPUT_ROWS: {"rows": 0}} if k == 0 else {}),
                               [] if spec.partials else None)
    storage.rmtree(spec.block_dir)


def _segment_done(spec: blocks.PassSpec, shard: Shard) -> bool:
    if not rundir.part_done(spec.part(shard.stem), spec.fingerprints[shard.index]):
        return False
    return not spec.partials or storage.exists(rundir.partials_path(spec.seg_dir, shard.stem))


# -- barriers --------------------------------------------------------------------------------
def _global_barrier(stage: GlobalStage, out: str, k: int, shards: list[Shard], fp: str) -> dict:
    """Only the small per-block partials meet on the driver: combine, finalize, save the artifact."""
    artifact = rundir.load_artifact(out, stage.instance_name, fp)
    if artifact is not None:
        return artifact
    parts = [p for s in shards for p in rundir.read_partials(seg_dir(out, k), s.stem)]
    artifact = stage.finalize(stage.combine(parts))
    rundir.save_artifact(stage, artifact, out, fp)
    return artifact
