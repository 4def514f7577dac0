"""Hamming-radius search: the indexed path finds exactly the pairs an exhaustive comparison finds."""
import numpy as np
import pytest

from winnow.kernels import hamming
from winnow.kernels.hamming import NearestIndex, band_values, greedy_survivors, near_duplicates, pairs_within


def _planted(rng, n_base, n_near, max_flip):
    base = rng.integers(0, 2**63, size=n_base, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    src = rng.integers(0, n_base, size=n_near)
    near = base[src].copy()
    for k in range(n_near):
        for bit in rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False):
            near[k] ^= np.uint64(1) << np.uint64(int(bit))
    return np.concatenate([base, near])


def _exhaustive(h, radius):
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= radius, k=1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_pairs_within_matches_exhaustive_on_both_paths(radius, monkeypatch):
    rng = np.random.default_rng(radius)
    h = _planted(rng, 3000, 600, max_flip=radius + 2)
    truth = _exhaustive(h, radius)
    assert len(truth) >= 150  # the planted pairs are there
    monkeypatch.setattr(hamming, "BRUTE_MAX", 10)  # force the faiss multi-hash index
    i, j, d = pairs_within(h, radius)
    assert set(zip(i.tolist(), j.tolist())) == truth
    assert (d == np.bitwise_count(h[i] ^ h[j])).all()
    monkeypatch.setattr(hamming, "BRUTE_MAX", 10**9)  # and the dense blocks
    i2, j2, _ = pairs_within(h, radius)
    assert set(zip(i2.tolist(), j2.tolist())) == truth


def test_band_pigeonhole_any_pair_within_radius_shares_a_band():
    rng = np.random.default_rng(1)
    for radius in (0, 2, 6, 9):
        h = _planted(rng, 500, 500, max_flip=radius)
        bands = band_values(h, radius + 1)
        i, j, _ = pairs_within(h, radius)
        assert len(i)
        assert (bands[:, i] == bands[:, j]).any(axis=0).all()
    # the bands cover all 64 bits: hashes equal on every band are equal
    a = np.array([0x0123456789ABCDEF, 0x0123456789ABCDEE], dtype=np.uint64)
    assert not (band_values(a, 7)[:, 0] == band_values(a, 7)[:, 1]).all()


def test_greedy_survivors_keeps_chain_ends_apart():
    # 0-1 near, 1-2 near, 0-2 far: 1 goes (dup of 0), 2 stays because its only near item is gone
    keep, dup = greedy_survivors(3, np.array([0, 1]), np.array([1, 2]))
    assert keep.tolist() == [True, False, True]
    assert dup.tolist() == [-1, 0, -1]
    # a star around 2: 0 and 1 are far apart; 2 goes as a duplicate of the best kept item near it
    keep, dup = greedy_survivors(4, np.array([2, 2, 3]), np.array([0, 1, 2]))
    assert keep.tolist() == [True, True, False, True]
    assert dup.tolist() == [-1, -1, 0, -1]
    # with distances, a duplicate points at the nearest better kept item instead of the best one
    keep, dup = greedy_survivors(4, np.array([2, 2, 3]), np.array([0, 1, 2]), np.array([6, 2, 4]))
    assert keep.tolist() == [True, True, False, True]
    assert dup.tolist() == [-1, -1, 1, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapsing_identical_hashes_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    distinct = _planted(rng, 60, 120, max_flip=5)
    h = distinct[rng.integers(0, len(distinct), 900)]  # many exact repeats, in a random rank order
    i, j, d = pairs_within(h, 4)
    assert len(i) > 5000
    keep_ref, dup_ref = greedy_survivors(len(h), i, j, d)
    keep, dup = near_duplicates(h, 4)
    assert (keep == keep_ref).all() and (dup == dup_ref).all()


def test_nearest_index_is_exact():
    rng = np.random.default_rng(2)
    ref = _planted(rng, 200, 0, 0)
    queries = _planted(rng, 50, 0, 0)
    dist, idx = NearestIndex(ref).nearest(queries)
    brute = np.bitwise_count(queries[:, None] ^ ref[None, :])
    assert (dist == brute.min(axis=1)).all()
    assert (brute[np.arange(len(queries)), idx] == dist).all()
    empty_d, empty_i = NearestIndex(np.zeros(0, np.uint64)).nearest(queries)
    assert (empty_i == -1).all() and (empty_d > 64).all()
