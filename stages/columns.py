"""Column conventions every stage and runner shares: the reject columns and small Arrow helpers.

At the bottom of the stage SDK (it imports nothing of winnow), so stages, runners and the report all
agree on what a rejected row looks like without importing each other.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

REJECT_STAGE = "reject_stage"
REJECT_REASON = "reject_reason"


def group_starts(keys: pa.ChunkedArray | pa.Array):
    """Row indices (an int64 numpy array) where a new key value begins in a column sorted by key."""
    import numpy as np

    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    differs = pc.fill_null(pc.not_equal(keys.slice(1), keys.slice(0, n - 1)), True)
    return np.r_[0, np.flatnonzero(differs.to_numpy(zero_copy_only=False)) + 1].astype(np.int64)


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Replace or append column ``name``."""
    idx = table.schema.get_field_index(name)
    if idx >= 0:
        return table.set_column(idx, name, values)
    return table.append_column(name, values)


def live_mask(table: pa.Table) -> pa.Array:
    """Boolean mask of rows not yet rejected."""
    if REJECT_STAGE not in table.column_names:
        return pa.array([True] * table.num_rows)
    return pc.is_null(table[REJECT_STAGE]).combine_chunks()


def ensure_reject_columns(table: pa.Table) -> pa.Table:
    for col in (REJECT_STAGE, REJECT_REASON):
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(table.num_rows, pa.string()))
    return table


def add_null_columns(table: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    for name, typ in columns.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    return table


def cast_produced(table: pa.Table, produces: dict[str, pa.DataType]) -> pa.Table:
    """Give produced columns their declared type so every batch has the same schema."""
    table = add_null_columns(table, produces)
    for name, typ in produces.items():
        if table.schema.field(name).type != typ:
            table = set_column(table, name, table[name].cast(typ))
    return table
