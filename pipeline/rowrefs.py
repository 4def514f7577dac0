"""Checkpoints without the input's image bytes: a part's rows refer to their input rows, and the bytes are
read from the input again only where something needs them.

Image bytes are nearly all of a pool (>99%), so copying them into every checkpoint part doubles a run's
writes and, on object storage, pays for them twice more (PUT, then GET). A segment's part of a shard
therefore keeps every column as it was but the input's ``image`` values, which are nulled: the column
stays (an all-null column is a few bytes of Parquet), so parts, manifests and kept sets keep the schema
and column order they always had. The reference to the input row is the part itself: it is named after
its shard (the stem; the fingerprint it is checked against covers the shard's key) and holds the shard's
rows in input order — row i of a part is row i of the shard (both runners keep that order, and
conservation keeps the count), the same position the runners' ``__winnow_row`` bookkeeping uses.

Bytes come back with ``attach`` (Parquet: the image column alone, and only the row groups holding the rows
asked for; tars and img2dataset folders: one streaming read of the shard), for
- the live rows at the start of a later segment whose steps read ``image`` (``Stage.reads_image``);
- the kept rows, when the kept set is written (an export reads the kept set).
The manifest never had bytes. A column a stage produced is not the input's: once a stage produces
``image`` (``download``), parts keep it. So do a segment's parts when its barrier may read ``image`` while
deciding (a custom stage that does not declare what it reads): ``plan_images`` decides this once per run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline.fingerprint import shard_key
from winnow.pipeline.inputs import Shard, column_sources, read_shard
from winnow.stages import storage
from winnow.stages.base import GlobalStage, GroupStage, Stage
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

IMAGE = "image"
METHOD = {"map": "process_batch", "prepare": "prepare", "apply": "apply"}  # a plan step's kind -> the method


def reads_image(stage: Stage, method: str) -> bool:
    """Whether ``method`` of ``stage`` may read the ``image`` column: what the stage declares
    (``reads_image``), every method when it declares nothing, and a stage that requires ``image`` reads
    it in its row-wise work (``process_batch``, ``prepare``)."""
    if stage.reads_image is None:
        return True
    return method in stage.reads_image or (IMAGE in stage.requires and method in ("process_batch", "prepare"))


def barrier_reads_image(stage: Stage | None) -> bool:
    """Whether a barrier's deciding may read ``image``: a global stage's ``partial``, a group stage's
    decision (only the columns it names in ``decide_columns()`` travel, when it names them)."""
    if isinstance(stage, GlobalStage):
        return reads_image(stage, "partial")
    if isinstance(stage, GroupStage):
        named = stage.decide_columns()
        return IMAGE in named if named is not None else reads_image(stage, "decide_group")
    return False


@dataclass(frozen=True)
class ImagePlan:
    """Per segment of a run: whether its parts keep ``image`` values (``keep``) and whether its steps read
    the input's bytes before any of them produces an ``image`` of its own (``needs``)."""

    keep: tuple[bool, ...]
    needs: tuple[bool, ...]

    def strip(self, table: pa.Table, k: int) -> pa.Table:
        """Segment ``k``'s rows as its part holds them."""
        return table if self.keep[k] else without_bytes(table)

    def attach_at_start(self, k: int) -> bool:
        """Segment ``k`` reads its rows from parts without bytes and one of its steps reads them."""
        return k > 0 and self.needs[k] and not self.keep[k - 1]

    def kept_from_input(self) -> bool:
        """The run's final parts hold no image values: kept rows get theirs from the input."""
        return bool(self.keep) and not self.keep[-1]


def without_bytes(table: pa.Table) -> pa.Table:
    """``table`` with its image values nulled (the column, its type and place stay)."""
    if IMAGE not in table.column_names or table[IMAGE].null_count == table.num_rows:
        return table
    return set_column(table, IMAGE, pa.nulls(table.num_rows, table.schema.field(IMAGE).type))


def plan_images(segments) -> ImagePlan:
    """The plan's segments (``plan.make_plan``) -> where image bytes are kept and where they are read."""
    keep, needs, produced = [], [], False
    for seg in segments:
        reads = False
        for step in seg.steps:
            if produced:
                break
            reads = reads or reads_image(step.stage, METHOD[step.kind])
            produced = IMAGE in step.stage.produces()
        needs.append(reads)
        keep.append(produced or barrier_reads_image(seg.barrier))
    return ImagePlan(tuple(keep), tuple(needs))


def attach(table: pa.Table, shard: Shard, columns: dict[str, str], rows: pa.Array | np.ndarray) -> pa.Table:
    """``table`` (a shard's rows in input order) with the input's image bytes put back on the rows of the
    boolean mask ``rows`` whose image is null; every other value unchanged. One read of the input at most;
    none when no such row is left or the table has no image column."""
    if IMAGE not in table.column_names or table.num_rows == 0:
        return table
    mask = _bools(rows) & ~_bools(pc.is_valid(table[IMAGE]))
    positions = np.flatnonzero(mask)
    if not len(positions):
        return table
    values = input_images(shard, columns, positions, table.num_rows)
    if values is None:
        return table
    old = table[IMAGE].combine_chunks()
    index = np.arange(table.num_rows)
    index[positions] = table.num_rows + np.arange(len(positions))
    merged = pa.concat_arrays([old, values.cast(old.type)]).take(pa.array(index))
    return set_column(table, IMAGE, merged)


def input_images(shard: Shard, columns: dict[str, str], positions: np.ndarray, expected_rows: int | None = None
                 ) -> pa.Array | None:
    """The input's image bytes of the rows at ``positions`` (sorted row numbers in the shard), in that
    order; None when the shard has no image column. The shard must be the one the checkpoint was made
    from (its key, and its row count when ``expected_rows`` is given): else one line saying so."""
    if shard_key(shard.path, shard.format) != shard.key:
        raise WinnowError(f"input {shard.path}: changed since this run read it (its checkpoints refer to its rows "
                          "by position); rerun to redo its shard")
    if shard.format != "parquet":  # tars and img2dataset folders: one streaming read of the shard
        table = read_shard(shard, columns)
        _check_rows(shard, table.num_rows, expected_rows)
        return table[IMAGE].take(pa.array(positions)).combine_chunks() if IMAGE in table.column_names else None
    pf = storage.parquet_file(shard.path)
    source = column_sources(pf.schema_arrow.names, columns, shard.path).get(IMAGE)
    if source is None:
        return None
    _check_rows(shard, pf.metadata.num_rows, expected_rows)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    starts = np.r_[0, np.cumsum(sizes)]
    groups = np.unique(np.searchsorted(starts, positions, side="right") - 1)  # only those holding the rows
    read = pf.read_row_groups(groups.tolist(), columns=[source])[source]
    read_starts = np.r_[0, np.cumsum([sizes[g] for g in groups])]  # where each read group begins
    where = np.searchsorted(groups, np.searchsorted(starts, positions, side="right") - 1)
    local = read_starts[where] + positions - starts[groups[where]]
    return read.take(pa.array(local)).combine_chunks()


def _bools(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_numpy(zero_copy_only=False).astype(bool)
    return np.asarray(values, dtype=bool)


def _check_rows(shard: Shard, rows: int, expected: int | None) -> None:
    if expected is not None and rows != expected:
        raise WinnowError(f"input {shard.path}: has {rows} rows, its checkpoint {expected}; it changed since this "
                          "run read it: rerun to redo its shard")
