"""The exact global keep-top threshold shared by ``clip_score``/``dfn`` and ``filter``.

Values are counted on a fixed 1e-6 grid: a mergeable, exact histogram (sparse: one entry per distinct
grid value), so per-batch partials add up in any grouping and the threshold is the k-th largest grid
value, k = ceil(fraction x counted rows), identical whatever the sharding. Values closer than 1e-6
tie; ties at the threshold are all kept (``rows_at_or_above`` may exceed k).
"""
from __future__ import annotations

import math

import numpy as np

GRID = 1_000_000
EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def to_grid(values: np.ndarray) -> np.ndarray:
    """Grid value (int64) of each value; callers pass float64 with no NaN."""
    return np.rint(np.asarray(values, dtype=np.float64) * GRID).astype(np.int64)


def grid_counts(values: np.ndarray):
    """The partial of one batch: (distinct grid values, their counts)."""
    keys, counts = np.unique(to_grid(values), return_counts=True)
    return keys.astype(np.int64), counts.astype(np.int64)


def combine_counts(parts):
    """Merge partials (associative, so runners may merge in any grouping)."""
    keys = np.concatenate([p[0] for p in parts]) if parts else EMPTY[0]
    counts = np.concatenate([p[1] for p in parts]) if parts else EMPTY[1]
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


def threshold(combined, fraction: float) -> dict:
    """``counted`` rows, and the ``threshold_grid``/``threshold`` keeping the top ``fraction`` of them
    (None when off or nothing was counted) with ``rows_at_or_above`` it."""
    keys, counts = combined
    counted = int(counts.sum())
    out = {"counted": counted, "threshold": None, "threshold_grid": None, "rows_at_or_above": None}
    if fraction and counted:
        k = max(1, math.ceil(fraction * counted - 1e-9))
        above = np.cumsum(counts[::-1])  # rows with grid value >= keys[::-1][j]
        j = int(np.searchsorted(above, k))
        out.update(threshold_grid=int(keys[::-1][j]), threshold=float(keys[::-1][j]) / GRID,
                   rows_at_or_above=int(above[j]))
    return out
