"""The Stage API: what a stage declares and the narrow methods it implements.

A stage is pure row-batch logic on ``pyarrow.Table``s. Batching, timing, counting and the
"already rejected rows pass through untouched" rule live here and in the runners, so a stage
module only says how to score or judge the live rows it is given. Stages never import ray.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.columns import (
    REJECT_REASON,
    REJECT_STAGE,
    add_null_columns,
    cast_produced,
    ensure_reject_columns,
    group_starts,
    live_mask,
    set_column,
)
from winnow.stages.context import StageContext
from winnow.stages.errors import WinnowError


@dataclass(frozen=True)
class Resources:
    """What one worker of this stage needs; the Ray adapter turns it into num_cpus/num_gpus.

    ``gpus=None`` means "one GPU per worker when the cluster has GPUs, else none": the runner resolves
    it against the cluster, never the host that parses the pipeline.
    """

    cpus: float = 1.0
    gpus: float | None = 0.0


INT64 = (-(2**63), 2**63 - 1)  # ints travel as Arrow int64 and C ssize_t: a bigger one is a user mistake


@dataclass(frozen=True)
class Param:
    """One user-settable parameter: shown by ``winnow stages`` and validated before anything runs.

    ``min``/``max`` bound a number (inclusive); ``open_min``/``open_max`` exclude the bound itself
    (a temperature or a ratio must be > 0). ``None`` is always allowed where the default is ``None``.
    """

    name: str
    type: type  # one of int, float, bool, str, list, dict
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False

    def range_text(self) -> str:
        """The allowed range as a user reads it: '>= 0', '> 0', 'in [0, 1]', 'in (0, 2)'; '' when unbounded."""
        lo, hi = (None if b is None else f"{b:g}" if isinstance(b, float) else str(b) for b in (self.min, self.max))
        if lo is not None and hi is not None:
            return f"in {'(' if self.open_min else '['}{lo}, {hi}{')' if self.open_max else ']'}"
        if lo is not None:
            return f"{'>' if self.open_min else '>='} {lo}"
        if hi is not None:
            return f"{'<' if self.open_max else '<='} {hi}"
        return ""

    def in_range(self, value: float) -> bool:
        # written so that NaN is out of every declared range
        lo_ok = self.min is None or (value > self.min if self.open_min else value >= self.min)
        hi_ok = self.max is None or (value < self.max if self.open_max else value <= self.max)
        return bool(lo_ok and hi_ok)

    def coerce(self, value: Any, where: str) -> Any:
        """Return ``value`` checked against this parameter's type and range, or raise a one-line WinnowError."""
        if value is None and self.default is None:
            return None
        t = self.type
        ok = (
            (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t not in (int, float) and isinstance(value, t))
        )
        if not ok:
            raise WinnowError(
                f"{where}: parameter '{self.name}' must be {t.__name__}, got {type(value).__name__} {value!r}"
            )
        if t is int and not INT64[0] <= value <= INT64[1]:
            raise WinnowError(f"{where}: parameter '{self.name}' must fit in 64 bits "
                              f"({INT64[0]}..{INT64[1]}), got {value}")
        if t is float:
            try:
                value = float(value)
            except OverflowError:  # an int beyond any float
                raise WinnowError(f"{where}: parameter '{self.name}' is too large for a float, got {value}") from None
        if t in (int, float) and not self.in_range(value):
            raise WinnowError(f"{where}: parameter '{self.name}' must be {self.range_text()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise WinnowError(f"{where}: parameter '{self.name}' must be one of {list(self.choices)}, got {value!r}")
        return value


class Stage:
    """Common declaration of every stage. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # input columns that must exist
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 4096
    # True when setup() loads something heavy: the Ray adapter then uses an actor pool.
    stateful: ClassVar[bool] = False
    # The methods that read the ``image`` column, e.g. ("process_batch",) or ("prepare",); () for none.
    # None (a stage that does not say) counts as all of them. Checkpoints hold no input image bytes, so
    # runners read them from the input again for the methods that read them (pipeline/rowrefs.py). A
    # stage that requires ``image`` reads it in process_batch/prepare whatever it declares.
    reads_image: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, instance_name: str | None = None, seed: int = 0, **params: Any):
        self.instance_name = instance_name or self.name
        self.seed = seed
        where = f"stage '{self.instance_name}' ({self.name})"
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise WinnowError(f"{where}: unknown parameter '{unknown[0]}'; valid: {', '.join(sorted(known)) or 'none'}")
        self.config = {n: p.coerce(params[n], where) if n in params else p.default for n, p in known.items()}
        self.context = StageContext()
        self.validate()
        self._ready = False

    # -- hooks a stage may override -------------------------------------------------------
    def validate(self) -> None:
        """Cross-parameter checks; raise WinnowError naming the parameter."""

    def setup(self) -> None:
        """Load models / indexes once per worker; choose the device here, never at construction."""

    def provenance(self) -> dict:
        """Model ids, checksums, versions: recorded in pipeline.json after setup()."""
        return {}

    def produces(self) -> dict[str, pa.DataType]:
        """Columns this stage adds (name -> type), used to keep schemas stable across batches."""
        return {}

    def idle_rules(self, columns: set[str]) -> list[str]:
        """The enabled rules that would have no column to act on when batches hold ``columns`` (the input's
        canonical columns plus what earlier stages produce), each as ``"rule: what it needs"``. A runner
        reports them before running: a rule with nothing to act on says so, it never quietly does nothing."""
        return []

    # -- helpers ----------------------------------------------------------------------------
    def gpus_given(self) -> bool:
        """Call in ``setup()``: True when the runner placed this worker on GPUs (``context.gpus``), so the
        stage must use CUDA; raises one line when it was given a GPU but sees no CUDA device, never
        letting a GPU worker run on CPU unnoticed. False when it was given none (pick the device freely)."""
        gpus = self.context.gpus
        if not gpus:
            return False
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if visible == "" or not cuda:
            raise WinnowError(
                f"stage '{self.instance_name}' was given {gpus:g} GPU on node {self.context.node or 'this worker'} "
                f"but sees no CUDA device (CUDA_VISIBLE_DEVICES={visible!r}, torch.cuda.is_available() is "
                f"{cuda}); give that node a working GPU and a CUDA build of torch, or run this stage on CPU "
                "(device: cpu or gpus: 0)")
        return True

    def ensure_setup(self, context: StageContext | None = None) -> None:
        """Set the stage up once per worker; ``context`` is what the runner owns (run directory, writer)."""
        if not self._ready:
            if context is not None:
                self.context = context
            self.setup()
            self._ready = True

    def __getattr__(self, item: str) -> Any:  # parameters read as attributes: self.min_words
        config = self.__dict__.get("config")
        if config is not None and item in config:
            return config[item]
        raise AttributeError(item)

    def check_columns(self, schema: pa.Schema, source: str) -> None:
        missing = [c for c in self.requires if c not in schema.names]
        if missing:
            raise WinnowError(
                f"stage '{self.instance_name}' needs column '{missing[0]}' which {source} does not have "
                f"(columns: {', '.join(schema.names)}); map it with --columns or add a stage that produces it"
            )

    def reject(self, table: pa.Table, reasons: list[str | None] | pa.Array) -> pa.Table:
        """Set reject_stage/reject_reason on rows whose reason is not None (only live rows reach a stage)."""
        reasons = pa.array(reasons, type=pa.string()) if not isinstance(reasons, pa.Array) else reasons
        stage = pc.if_else(pc.is_null(reasons), pa.scalar(None, pa.string()), pa.scalar(self.instance_name))
        table = set_column(table, REJECT_STAGE, stage)
        return set_column(table, REJECT_REASON, reasons)


class MapStage(Stage):
    """Adds columns and/or rejects rows, one batch at a time."""

    def process_batch(self, table: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError


class GlobalStage(Stage):
    """Needs every row before deciding: map -> small artifact -> map, split by an explicit barrier.

    ``partial`` runs per batch and returns something small and picklable; ``combine`` must be
    associative (runners merge partials in any grouping); ``finalize`` turns the merged partial into
    the artifact (JSON-able: a threshold, counts, ...); ``apply`` is a map using it.
    An optional ``prepare`` map runs before ``partial`` and its columns are kept (e.g. scores).
    """

    def prepare(self, table: pa.Table) -> pa.Table:
        return table

    def partial(self, table: pa.Table) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, parts: list[Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, combined: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, table: pa.Table, artifact: dict) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def write_artifacts(self, artifact: dict, write_table) -> None:
        """Optional extra files beside the artifact (``write_table(table, file_name)``), before the
        runner writes the artifact's JSON, which marks the barrier done."""


class GroupStage(Stage):
    """Grouping work (dedup): a map computes a key column, rows sharing a key are decided together.

    Runners group with the engine's shuffle (Ray Data groupby); the driver never collects rows.
    ``decide_group`` gets every live row of one key value and returns it with decisions added.
    Rows whose key is null are not grouped and pass through.
    """

    key_column: ClassVar[str] = ""

    def group_keys(self) -> list[str]:
        """Key columns, grouped one after another (default: just ``key_column``).

        Each pass groups by one key and sees only the rows still live after the previous pass, so a
        stage whose rows must meet in several groups (perceptual dedup: one pass per pHash band) is
        still one shuffle per pass with one key per row. Runners must loop over these in order.
        """
        return [self.key_column]

    def prepare(self, table: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def decide_group(self, group: pa.Table) -> pa.Table:  # pragma: no cover - abstract
        raise NotImplementedError

    def decide_groups(self, groups: pa.Table, key: str) -> pa.Table:
        """Decide many groups in one call: ``groups`` holds whole groups (two or more live rows each)
        back to back, sorted by ``key`` then uid. The default calls ``decide_group`` per group; a stage
        with millions of tiny groups (exact dedup) overrides it to decide them all vectorised.
        """
        import numpy as np

        starts = group_starts(groups[key])
        ends = np.r_[starts[1:], groups.num_rows]
        parts = [self.decide_group(groups.slice(s, e - s)) for s, e in zip(starts, ends)]
        return pa.concat_tables(parts, promote_options="permissive") if parts else groups

    def decide_columns(self) -> list[str] | None:
        """The columns deciding reads (None = all). A runner may then move only these, plus uid, the
        keys, the reject columns and ``produces()``, through the shuffle and patch the decisions back
        into the full rows: image bytes need not travel.
        """
        return None


def run_on_live_rows(table: pa.Table, fn, produces: dict[str, pa.DataType]) -> pa.Table:
    """Call ``fn`` on the live rows only and put rejected rows back in place, unchanged.

    New columns are null on the rows that were already rejected. Conservation is checked here:
    a stage may add columns and reject rows, never drop or add them.
    """
    table = ensure_reject_columns(table)
    mask = live_mask(table)
    n_live = pc.sum(mask).as_py() or 0
    if n_live == table.num_rows:
        out = fn(table)
        _check_same_rows(table, out)
        return cast_produced(out, produces)
    if n_live == 0:
        return add_null_columns(table, produces)
    import numpy as np

    live_idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    dead_idx = np.flatnonzero(~mask.to_numpy(zero_copy_only=False))
    live = table.take(pa.array(live_idx))
    out = cast_produced(fn(live), produces)
    _check_same_rows(live, out)
    dead = add_null_columns(table.take(pa.array(dead_idx)), {f.name: f.type for f in out.schema})
    dead = dead.select(out.schema.names).cast(out.schema)
    merged = pa.concat_tables([out, dead])
    order = np.argsort(np.concatenate([live_idx, dead_idx]), kind="stable")
    return merged.take(pa.array(order))


def _check_same_rows(before: pa.Table, after: pa.Table) -> None:
    if after.num_rows != before.num_rows:
        raise RuntimeError(f"stage returned {after.num_rows} rows for {before.num_rows}: stages must not drop rows")

