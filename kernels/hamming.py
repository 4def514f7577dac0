"""Near-neighbour search among 64-bit hashes under a Hamming radius, never by comparing all pairs at scale.

- ``pairs_within``: every pair (i < j) of a set within ``radius`` bits. Small sets: one vectorised
  XOR/popcount block at a time (cheaper than building an index). Larger sets: faiss
  ``IndexBinaryMultiHash`` with ``radius + 1`` hash tables on disjoint bit bands — by pigeonhole a pair
  within ``radius`` bits agrees exactly on at least one band, so the search is exact, and it only
  verifies pairs that share a band.
- ``greedy_survivors``: resolve those pairs into keep/duplicate-of decisions in rank order.
- ``NearestIndex``: a fixed reference set (eval images) queried by many rows: nearest hash and distance.
"""
from __future__ import annotations

import numpy as np

BRUTE_MAX = 2048  # below this many hashes a dense XOR block beats building an index
BLOCK = 1024


def to_codes(hashes: np.ndarray) -> np.ndarray:
    """(n,) uint64 -> (n, 8) uint8, the layout faiss binary indexes take (bit order is irrelevant to distance)."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64)).view(np.uint8).reshape(-1, 8)


def band_values(hashes: np.ndarray, n_bands: int) -> np.ndarray:
    """(n,) uint64 -> (n_bands, n) int64: the hash cut into ``n_bands`` disjoint bit bands covering all 64 bits.

    Two hashes within ``n_bands - 1`` bits of each other agree exactly on at least one band.
    """
    if not 1 <= n_bands <= 64:
        raise ValueError(f"n_bands must be in 1..64, got {n_bands}")
    h = np.asarray(hashes, dtype=np.uint64)
    edges = np.linspace(0, 64, n_bands + 1).round().astype(int)
    out = np.empty((n_bands, len(h)), dtype=np.int64)
    for b in range(n_bands):
        width = int(edges[b + 1] - edges[b])
        mask = np.uint64((1 << width) - 1)
        out[b] = ((h >> np.uint64(edges[b])) & mask).astype(np.int64)
    return out


def pairs_within(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, with Hamming distance <= radius; returns (i, j, distance), sorted by (i, j)."""
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2 or radius < 0:
        e = np.empty(0, np.int64)
        return e, e, e
    if n <= BRUTE_MAX:
        ii, jj, dd = _pairs_dense(h, radius)
    else:
        ii, jj, dd = _pairs_faiss(h, radius)
    order = np.lexsort((jj, ii))
    return ii[order], jj[order], dd[order]


def _pairs_dense(h: np.ndarray, radius: int):
    parts_i, parts_j, parts_d = [], [], []
    for a in range(0, len(h), BLOCK):
        blk = h[a:a + BLOCK]
        dist = np.bitwise_count(blk[:, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= radius)
        rows = rows + a
        keep = cols > rows
        parts_i.append(rows[keep])
        parts_j.append(cols[keep])
        parts_d.append(dist[rows[keep] - a, cols[keep]])
    return (np.concatenate(parts_i).astype(np.int64), np.concatenate(parts_j).astype(np.int64),
            np.concatenate(parts_d).astype(np.int64))


def _pairs_faiss(h: np.ndarray, radius: int):
    import faiss

    nhash = min(radius + 1, 64)
    b = 64 // nhash  # nhash tables of b bits: any pair within radius matches one table exactly
    index = faiss.IndexBinaryMultiHash(64, nhash, b)
    index.nflip = 0
    codes = to_codes(h)
    index.add(codes)
    lims, dist, idx = index.range_search(codes, radius + 1)  # faiss: distance < radius
    rows = np.repeat(np.arange(len(h), dtype=np.int64), np.diff(lims).astype(np.int64))
    idx = idx.astype(np.int64)
    keep = idx > rows
    return rows[keep], idx[keep], dist[keep].astype(np.int64)


def greedy_survivors(n: int, i: np.ndarray, j: np.ndarray, dist: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Keep/duplicate decisions for ``n`` items given near pairs, items numbered in preference order (0 = best).

    Greedy in that order: an item is kept unless a better *kept* item is near it. Kept items are
    pairwise far apart. Each duplicate points at the nearest better kept item (ties: the better one;
    without ``dist``, the best one). Returns (keep bool[n], dup_of int64[n] with -1 for kept items).
    """
    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    if len(i) == 0:
        return keep, dup_of
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    d = np.zeros(len(lo), np.int64) if dist is None else np.asarray(dist, np.int64)
    order = np.lexsort((hi, lo))
    slo, shi = lo[order], hi[order]
    starts = np.flatnonzero(np.r_[True, slo[1:] != slo[:-1]])
    ends = np.r_[starts[1:], len(slo)]
    for s, e in zip(starts, ends):  # one iteration per item that has worse neighbours
        if keep[slo[s]]:
            keep[shi[s:e]] = False
    edge = keep[lo] & ~keep[hi]  # every duplicate has at least one such edge
    lo, hi, d = lo[edge], hi[edge], d[edge]
    order = np.lexsort((lo, d, hi))
    first = np.r_[True, hi[order][1:] != hi[order][:-1]]
    dup_of[hi[order][first]] = lo[order][first]
    return keep, dup_of


def near_duplicates(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``greedy_survivors`` over every pair within ``radius`` of ``hashes`` (given best first), with
    identical hashes collapsed before the pair search: a pool's thousands of copies of one placeholder
    image would otherwise be millions of pairs. Returns (keep, dup_of index or -1); equal to the plain
    all-pairs result.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    by_rank = np.argsort(first, kind="stable")  # distinct hashes in the order of their best row
    rep = first[by_rank]  # that best row, increasing
    slot = np.empty(len(uniq), np.int64)
    slot[by_rank] = np.arange(len(uniq))
    i, j, d = pairs_within(uniq[by_rank], radius)
    keep_u, dup_u = greedy_survivors(len(rep), i, j, d)
    keep = np.zeros(len(h), dtype=bool)
    keep[rep[keep_u]] = True
    dup_of = np.full(len(h), -1, dtype=np.int64)
    dup_of[rep[~keep_u]] = rep[dup_u[~keep_u]]
    u_of = slot[inverse.reshape(-1)]
    members = np.flatnonzero(~np.isin(np.arange(len(h)), rep))
    dup_of[members] = rep[u_of[members]]  # distance 0 to their best copy ...
    lost = members[~keep_u[u_of[members]]]  # ... unless that copy went too: nearest kept better row
    if len(lost):
        kept_near: dict[int, list] = {}
        for a, b, dist in zip(i.tolist(), j.tolist(), d.tolist()):
            if keep_u[a] and not keep_u[b]:
                kept_near.setdefault(b, []).append((dist, int(rep[a])))
            if keep_u[b] and not keep_u[a]:
                kept_near.setdefault(a, []).append((dist, int(rep[b])))
        for m in lost.tolist():
            dup_of[m] = min(c for c in kept_near[int(u_of[m])] if c[1] < m)[1]
    return keep, dup_of


class NearestIndex:
    """Exact nearest reference hash for each query (faiss IndexBinaryFlat: the reference set is small)."""

    def __init__(self, reference: np.ndarray):
        import faiss

        self.size = len(reference)
        self._index = faiss.IndexBinaryFlat(64)
        if self.size:
            self._index.add(to_codes(reference))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, reference index) per query; (65, -1) when the reference set is empty."""
        q = np.asarray(queries, dtype=np.uint64)
        if self.size == 0 or len(q) == 0:
            return np.full(len(q), 65, np.int64), np.full(len(q), -1, np.int64)
        dist, idx = self._index.search(to_codes(q), 1)
        return dist[:, 0].astype(np.int64), idx[:, 0].astype(np.int64)
