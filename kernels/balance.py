"""MetaCLIP balancing: entry counts -> entry probabilities -> per-row keep probabilities -> keyed decisions.

An entry matched ``count`` times over the whole pool gets ``p = 1`` if ``count < t`` else ``t / count`` (the head is
flattened to about ``t`` matches, the tail is kept whole); a row matching entries E is kept with probability
``1 - prod_{e in E} (1 - p_e)``. Rows are given as CSR (``ids[offsets[i]:offsets[i+1]]`` = row i's entry ids).

Draws are a pure function of ``(seed, uid)``: a 64-bit polynomial hash of the uid's UTF-8 bytes finished with
splitmix64, all vectorised, so reruns, resharding and the Ray runner select the same rows, and 10M rows take
about a second.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

_M64 = (1 << 64) - 1
_POLY = np.uint64(0x9E3779B97F4A7C15 | 1)  # odd multiplier of the polynomial string hash
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Rows hashed per chunk: bounds the per-byte temporaries (8 bytes per uid byte).
_HASH_CHUNK_BYTES = 1 << 23


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """``p_e = 1`` if ``count_e < t`` else ``t / count_e`` (float64; entries never matched get 1)."""
    counts = np.asarray(counts, np.float64)
    return t / np.maximum(counts, t) if t > 0 else np.zeros(len(counts))


def keep_probabilities(offsets: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per row ``1 - prod(1 - p_e)`` over its entries; a row without entries gets 0."""
    n = len(offsets) - 1
    out = np.zeros(n, np.float64)
    if len(ids) == 0:
        return out
    miss = (1.0 - probs)[ids]  # one gather from the small per-entry array
    starts = np.asarray(offsets[:-1])
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    # reduceat over the starts of non-empty rows: each segment runs to the next non-empty start, and the
    # empty rows in between add nothing, so the segments are exactly the rows.
    out[nonempty] = 1.0 - np.multiply.reduceat(miss, starts[nonempty])
    return out


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_strings(data: np.ndarray, offsets: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """Stable 64-bit hashes of strings given as UTF-8 bytes + offsets (Arrow's layout), keyed by seed and salt.

    ``sum_i (byte_i + 1) * P^(len-1-i) mod 2^64`` per string, mixed with the length, seed and salt through
    splitmix64. Depends only on the bytes: the same uid hashes the same in any batch, shard or process.
    """
    data = np.asarray(data, np.uint8)
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    poly = np.zeros(n, np.uint64)
    max_len = int(lengths.max()) if n else 0
    if max_len:
        powers = np.empty(max_len, np.uint64)
        powers[0] = 1
        if max_len > 1:
            powers[1:] = _POLY
            powers = np.cumprod(powers, dtype=np.uint64)  # wraps mod 2^64
        row = 0
        while row < n:  # chunks of rows with a bounded number of bytes
            stop = int(np.searchsorted(offsets, offsets[row] + _HASH_CHUNK_BYTES, side="right")) - 1
            stop = min(max(stop, row + 1), n)
            poly[row:stop] = _poly_chunk(data, offsets[row:stop + 1], powers)
            row = stop
    key = np.uint64(((seed & _M64) * 0xD1B54A32D192ED03 + (salt & _M64) * 0x2545F4914F6CDD1D + 1) & _M64)
    return splitmix64(splitmix64(poly ^ key) + lengths.astype(np.uint64) * _MIX2)


def _poly_chunk(data: np.ndarray, offsets: np.ndarray, powers: np.ndarray) -> np.ndarray:
    lengths = np.diff(offsets)
    lo, hi = int(offsets[0]), int(offsets[-1])
    out = np.zeros(len(lengths), np.uint64)
    if hi == lo:
        return out
    # exponent of each byte = its distance to the end of its string
    exps = np.repeat(offsets[1:], lengths) - 1 - np.arange(lo, hi)
    terms = (data[lo:hi].astype(np.uint64) + np.uint64(1)) * powers[exps]
    nonempty = np.flatnonzero(lengths > 0)
    out[nonempty] = np.add.reduceat(terms, offsets[:-1][nonempty] - lo)
    return out


def uniform_from_hash(hashes: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from the top 53 bits of 64-bit hashes."""
    return (hashes >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keep_decisions(keep_prob: np.ndarray, uid_data: np.ndarray, uid_offsets: np.ndarray, seed: int,
                   salt: int = 0) -> np.ndarray:
    """Row kept iff its (seed, uid)-keyed uniform draw is below its keep probability."""
    u = uniform_from_hash(hash_strings(uid_data, uid_offsets, seed, salt))
    return u < keep_prob


def tail_fraction(counts: np.ndarray, t: float) -> float:
    """MetaCLIP 2's ``t_to_p``: the share of all matches that fall on tail entries (count < t)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total > 0 else 0.0


def threshold_for_tail_fraction(counts: np.ndarray, p: float) -> float:
    """MetaCLIP 2's ``p_to_t``: the count at which the sorted cumulative share of matches is closest to ``p``."""
    return threshold_from_table(tail_table(counts), p)


def tail_table(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted counts and their cumulative share of matches, computed once when p_to_t is asked many times."""
    counts = np.sort(np.asarray(counts, np.float64))
    total = counts.sum()
    return counts, (np.cumsum(counts) / total if total > 0 else np.zeros(len(counts)))


def threshold_from_table(table: tuple[np.ndarray, np.ndarray], p: float) -> float:
    counts, portion = table
    if len(counts) == 0 or counts[-1] <= 0:
        return 0.0
    return float(counts[int(np.abs(portion - p).argmin())])


def bisect_increasing(f: Callable[[float], float], target: float, lo: float, hi: float,
                      iterations: int = 60) -> float:
    """Smallest-ish x in [lo, hi] with f(x) >= target for a non-decreasing f (returns hi if unreachable)."""
    if f(hi) <= target:
        return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


def smallest_k(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest values in ascending order (stable for ties), without a full sort."""
    if len(values) > k:
        part = np.argpartition(values, k - 1)[:k]
        return part[np.lexsort((part, values[part]))]
    return np.argsort(values, kind="stable")


def csr_take(offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows ``rows`` (in that order) as a new CSR."""
    rows = np.asarray(rows, np.int64)
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    pos = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total)
    return new_offsets, ids[pos]


def sorted_curve(counts: np.ndarray, t: float, points: int = 256) -> dict:
    """Entry counts ranked descending (matched entries only), before and expected after (``min(count, t)``),
    at about ``points`` log-spaced ranks: enough for a plot, a few KB for 500k entries."""
    before = np.sort(np.asarray(counts, np.int64))[::-1]
    before = before[before > 0]
    if len(before) == 0:
        return {"rank": [], "before": [], "after": []}
    ranks = np.unique(np.geomspace(1, len(before), num=min(points, len(before))).round().astype(np.int64))
    picked = before[ranks - 1]
    return {"rank": ranks.tolist(), "before": picked.tolist(),
            "after": np.minimum(picked.astype(np.float64), t).tolist()}
