"""A pipeline as segments of row-wise steps separated by barriers; shared by the local and Ray runners.

Map stages are one step each. A global stage is a ``prepare`` step at the end of its segment, a
barrier (partial -> combine -> finalize = artifact) and an ``apply`` step opening the next segment.
A group stage is a ``prepare`` step (computes the key), then a barrier where rows sharing a key are
decided together. Runners differ only in how they move tables between steps and do barriers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from winnow.pipeline import stats as stats_mod
from winnow.stages.base import GlobalStage, GroupStage, MapStage, Stage, run_on_live_rows
from winnow.stages.columns import group_starts, live_mask
from winnow.stages.context import StageContext
from winnow.stages.errors import WinnowError


@dataclass
class Step:
    """One row-wise transform of a table; ``kind`` is map, prepare or apply."""

    stage: Stage
    kind: str
    artifact: dict | None = None
    context: StageContext | None = None  # what the runner owns, handed to the stage's setup


    def run(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """Apply the step to the live rows; returns the table and this step's stats for its stage."""
        stage = self.stage
        stage.ensure_setup(self.context)
        n_live = count_live(table)
        t0 = time.perf_counter()
        if self.kind == "map":
            out = run_on_live_rows(table, stage.process_batch, stage.produces())
        elif self.kind == "prepare":
            out = run_on_live_rows(table, stage.prepare, stage.produces())
        elif self.kind == "apply":
            if self.artifact is None:
                raise RuntimeError(f"stage {stage.instance_name}: apply step without its artifact")
            artifact = self.artifact
            out = run_on_live_rows(table, lambda t: stage.apply(t, artifact), stage.produces())
        else:  # pragma: no cover
            raise ValueError(self.kind)
        seconds = time.perf_counter() - t0
        if self.kind == "prepare":  # the decision (and its counts) comes after the barrier
            return out, {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": seconds}
        return out, stats_mod.count_stage(n_live, out, stage.instance_name, seconds)


@dataclass
class Segment:
    steps: list[Step] = field(default_factory=list)
    barrier: Stage | None = None  # GlobalStage or GroupStage ending this segment


def make_plan(stages: list[Stage], context: StageContext | None = None) -> list[Segment]:
    segments = [Segment()]
    for stage in stages:
        if isinstance(stage, (GlobalStage, GroupStage)):
            segments[-1].steps.append(Step(stage, "prepare", context=context))
            segments[-1].barrier = stage
            segments.append(Segment())
            if isinstance(stage, GlobalStage):
                segments[-1].steps.append(Step(stage, "apply", context=context))
        elif isinstance(stage, MapStage):
            segments[-1].steps.append(Step(stage, "map", context=context))
        else:
            raise TypeError(f"{stage!r} is not a MapStage, GlobalStage or GroupStage")
    if not segments[-1].steps and len(segments) > 1:
        segments.pop()
    return segments


def check_columns(stages: list[Stage], schema: pa.Schema, source: str) -> None:
    """Every stage finds the columns it requires: in the input, or produced by an earlier stage. Checked
    before anything runs, so a pipeline that cannot work fails in a second, naming stage and column."""
    available = set(schema.names)
    for i, stage in enumerate(stages):
        missing = [c for c in stage.requires if c not in available]
        if missing:
            earlier = f" and no earlier stage ({', '.join(s.instance_name for s in stages[:i])}) produces" if i else ""
            raise WinnowError(f"stage '{stage.instance_name}' needs column '{missing[0]}' which input {source} does "
                              f"not have{earlier} (columns: {', '.join(schema.names)}); map it with --columns or "
                              "add a stage that produces it")
        available |= set(stage.produces())


def idle_rules(stages: list[Stage], schema: pa.Schema) -> dict[str, list[str]]:
    """stage -> its enabled rules with no column to act on, given the input and what earlier stages produce."""
    available = set(schema.names)
    out = {}
    for stage in stages:
        idle = stage.idle_rules(set(available))
        if idle:
            out[stage.instance_name] = idle
        available |= set(stage.produces())
    return out


def writes_outputs(segments: list[Segment], k: int) -> bool:
    """Segment k's pass holds each shard's final rows (the last segment, no barrier after it): both runners
    write the run's manifest/kept from them in that pass instead of reading the parts back afterwards."""
    return k == len(segments) - 1 and segments[k].barrier is None


def run_steps(steps: list[Step], table: pa.Table) -> tuple[pa.Table, dict[str, dict]]:
    """Run a segment's steps on one table, collecting per-stage stats."""
    by_stage: dict[str, dict] = {}
    for step in steps:
        table, st = step.run(table)
        name = step.stage.instance_name
        by_stage[name] = stats_mod.merge(by_stage.get(name, {}), st)
    return table, by_stage


def global_partial(stage: GlobalStage, table: pa.Table) -> Any:
    """The stage's partial over the live rows of one table."""
    stage.ensure_setup()
    live = table.filter(live_mask(table)) if table.num_rows else table
    return stage.partial(live)


def group_live_rows(stage: GroupStage, table: pa.Table, key: str | None = None) -> pa.Table:
    """Decide every key group with two or more live rows (table may span shards); others pass through.

    Without ``key``, one pass per ``stage.group_keys()`` in order, each over the rows the previous
    passes left live. Used by the local runner on the whole run; the Ray runner does the same per
    group after a shuffle (one shuffle per key).
    """
    import numpy as np
    import pyarrow.compute as pc

    if key is None:
        for k in stage.group_keys():
            table = group_live_rows(stage, table, k)
        return table
    stage.ensure_setup()
    eligible = pc.and_(live_mask(table), pc.is_valid(table[key]))
    idx = np.flatnonzero(eligible.to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return table
    sub = table.take(pa.array(idx)).append_column("__pos", pa.array(idx))
    sub = sub.sort_by([(key, "ascending"), ("uid", "ascending")])
    starts = group_starts(sub[key])
    sizes = np.diff(np.r_[starts, len(sub)])
    in_group = np.repeat(sizes > 1, sizes)  # only keys with two or more live rows are decided
    if not in_group.any():
        return table
    sub = sub.filter(pa.array(in_group))
    starts = np.r_[0, np.cumsum(sizes[sizes > 1])[:-1]].astype(np.int64)
    decided = []
    for a, b in _chunks(starts, len(sub), GROUP_CHUNK_ROWS):  # whole groups per call, bounded size
        decided.append(stage.decide_groups(sub.slice(a, b - a), key))
    decided_t = pa.concat_tables(decided, promote_options="permissive")
    return replace_rows(table, decided_t)


GROUP_CHUNK_ROWS = 1_000_000


def _chunks(starts: np.ndarray, n: int, target: int):
    """(begin, end) row ranges of consecutive whole groups, about ``target`` rows each (a bigger group alone)."""
    begin = 0
    while begin < n:
        if begin + target >= n:
            end = n
        else:
            i = int(np.searchsorted(starts, begin + target, side="right"))  # starts[:i] <= begin + target
            if starts[i - 1] > begin:
                end = int(starts[i - 1])
            else:  # one group longer than target: it goes alone
                end = int(starts[i]) if i < len(starts) else n
        yield begin, end
        begin = end


def replace_rows(table: pa.Table, decided: pa.Table) -> pa.Table:
    """Put decided rows (carrying ``__pos``) back at their positions in ``table``."""
    import numpy as np

    pos = decided["__pos"].to_numpy()
    decided = decided.drop_columns(["__pos"])
    keep = np.ones(table.num_rows, bool)
    keep[pos] = False
    rest_idx = np.flatnonzero(keep)
    rest = table.take(pa.array(rest_idx))
    merged = pa.concat_tables([rest, decided.select(rest.schema.names).cast(rest.schema)])
    order = np.argsort(np.concatenate([rest_idx, pos]), kind="stable")
    return merged.take(pa.array(order))


def count_live(table: pa.Table) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(live_mask(table)).as_py() or 0) if table.num_rows else 0
