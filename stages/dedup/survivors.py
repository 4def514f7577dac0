"""What every dedup stage shares: the survivor rule and how a duplicate is recorded.

The survivor of a duplicate group depends only on the rows' values (``prefer`` policy, ties by
smallest uid), never on shard boundaries or row order; duplicates are rejected with ``dup:<kind>``
and ``dup_of`` = the uid of the row they duplicate.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

DUP_OF = "dup_of"
PREFER_HELP = ("which row of a duplicate group survives: 'uid' (smallest uid), 'max:COLUMN' or 'min:COLUMN' "
               "(e.g. max:clip_score, max:width); ties and nulls fall back to the smallest uid")


def check_prefer(prefer: str, where: str, extra: tuple[str, ...] = ()) -> None:
    if prefer in ("uid", *extra) or (prefer.startswith(("max:", "min:")) and len(prefer) > 4):
        return
    choices = ", ".join(["uid", *extra, "max:COLUMN", "min:COLUMN"])
    raise WinnowError(f"{where}: parameter 'prefer' must be one of {choices}; got {prefer!r}")


def survivor_order(table: pa.Table, prefer: str, values: np.ndarray | None = None) -> np.ndarray:
    """Row indices best first under ``prefer``; ``values`` overrides the column (higher = better)."""
    uids = np.array(table["uid"].to_pylist(), dtype=object)
    by_uid = np.argsort(uids, kind="stable")
    if prefer == "uid" and values is None:
        return by_uid
    if values is None:
        values = prefer_values(table, prefer)
    v = np.asarray(values, dtype=np.float64)[by_uid]
    v = np.where(np.isnan(v), -np.inf, v)  # nulls rank last
    return by_uid[np.argsort(-v, kind="stable")]  # stable: equal values stay in uid order


def mark_duplicates(stage, group: pa.Table, dup_index: np.ndarray, reason: str) -> pa.Table:
    """Reject rows whose ``dup_index`` >= 0 with ``reason``; dup_of = uid of the row they duplicate."""
    is_dup = pa.array(np.asarray(dup_index) >= 0)
    reasons = pc.if_else(is_dup, pa.scalar(reason), pa.scalar(None, pa.string()))
    dup_of = pc.if_else(is_dup, group["uid"].take(pa.array(np.maximum(dup_index, 0))), pa.scalar(None, pa.string()))
    group = stage.reject(group, reasons)
    return set_column(group, DUP_OF, dup_of.cast(pa.string()))


def prefer_columns(prefer: str) -> list[str]:
    """Columns a ``prefer`` policy reads (for ``decide_columns``)."""
    return [prefer.split(":", 1)[1]] if prefer.startswith(("max:", "min:")) else []


def prefer_values(table: pa.Table, prefer: str) -> np.ndarray:
    """Higher is better; NaN for nulls."""
    sign, col = prefer.split(":", 1)
    if col not in table.column_names:
        raise WinnowError(f"prefer={prefer}: column '{col}' not found (columns: {', '.join(table.column_names)})")
    try:
        raw = table[col].cast(pa.float64()).to_numpy()  # nulls -> NaN
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise WinnowError(f"prefer={prefer}: column '{col}' is not numeric ({table.schema.field(col).type})") from None
    return raw if sign == "max" else -raw


def sorted_by_uid(groups: pa.Table, starts: np.ndarray) -> bool:
    """Runners hand groups sorted by (key, uid): then within-group uid order is row order."""
    uids = groups["uid"].combine_chunks()
    n = len(uids)
    if n < 2:
        return True
    le = pc.less_equal(uids.slice(0, n - 1), uids.slice(1)).to_numpy(zero_copy_only=False)
    boundary = np.zeros(n - 1, bool)
    boundary[starts[1:] - 1] = True
    return bool((le | boundary).all())
