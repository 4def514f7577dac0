"""Balancing kernels: probabilities, keep probabilities, keyed draws, MetaCLIP 2 thresholds, t solving."""
import math

import numpy as np
import pytest

from winnow.kernels import balance as bal

M64 = (1 << 64) - 1


def _csr(rows):
    offsets = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    ids = np.array([i for r in rows for i in r], np.int64)
    return offsets, ids


def _bytes_csr(strings):
    raw = [s.encode("utf-8") for s in strings]
    return np.frombuffer(b"".join(raw), np.uint8), np.r_[0, np.cumsum([len(r) for r in raw])].astype(np.int64)


def _reference_hash(b: bytes, seed: int, salt: int) -> int:
    """The documented hash with Python's unbounded ints, independent of the numpy implementation."""
    h = 0
    for x in b:
        h = (h * (0x9E3779B97F4A7C15 | 1) + x + 1) & M64
    key = ((seed & M64) * 0xD1B54A32D192ED03 + (salt & M64) * 0x2545F4914F6CDD1D + 1) & M64

    def mix(z):
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & M64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    return mix((mix(h ^ key) + len(b) * 0x94D049BB133111EB) & M64)


def test_entry_probabilities_flatten_the_head_only():
    p = bal.entry_probabilities(np.array([0, 1, 99, 100, 400, 10_000]), 100)
    assert p.tolist() == [1.0, 1.0, 1.0, 1.0, 0.25, 0.01]


def test_keep_probability_is_one_minus_product_of_misses():
    probs = np.array([0.5, 0.1, 1.0, 0.2])
    rows = [[0, 1], [], [3], [0, 1, 3], [2, 0], []]
    keep = bal.keep_probabilities(*_csr(rows), probs)
    want = [1 - math.prod(1 - probs[i] for i in r) if r else 0.0 for r in rows]
    assert keep == pytest.approx(want, abs=1e-15)
    assert bal.keep_probabilities(*_csr([[], []]), probs).tolist() == [0.0, 0.0]


def test_hash_matches_the_documented_formula_on_any_layout(monkeypatch):
    uids = ["", "a", "b", "s0-0000001", "héllo wörld ✓", "x" * 700, "uid-42"]
    data, offsets = _bytes_csr(uids)
    got = bal.hash_strings(data, offsets, seed=7, salt=3)
    assert [int(h) for h in got] == [_reference_hash(u.encode(), 7, 3) for u in uids]
    # Arrow-style offsets into a larger buffer (a slice) and tiny chunks give the same hashes
    monkeypatch.setattr(bal, "_HASH_CHUNK_BYTES", 5)
    assert (bal.hash_strings(data, offsets[2:], 7, 3) == got[2:]).all()
    assert len(set(got.tolist())) == len(uids)
    assert (bal.hash_strings(data, offsets, 8, 3) != got).all()  # the seed changes every draw
    assert (bal.hash_strings(data, offsets, 7, 4) != got).all()  # so does the salt


def test_uniform_draws_look_uniform():
    data, offsets = _bytes_csr([f"s0-{i:07d}" for i in range(200_000)])
    u = bal.uniform_from_hash(bal.hash_strings(data, offsets, 0))
    assert 0 <= u.min() and u.max() < 1
    hist = np.bincount((u * 20).astype(int), minlength=20)
    expected = len(u) / 20
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 45  # 19 dof: p ~ 0.001
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbouring uids are not correlated


def test_realized_keep_count_within_three_sd_of_expected():
    rng = np.random.default_rng(0)
    n = 50_000
    counts_per_entry = rng.zipf(1.6, 2000).astype(np.int64)
    lengths = rng.integers(1, 6, n)
    ids = rng.integers(0, 2000, lengths.sum())
    offsets = np.r_[0, np.cumsum(lengths)]
    keep_prob = bal.keep_probabilities(offsets, ids, bal.entry_probabilities(counts_per_entry, 3.0))
    data, uoff = _bytes_csr([f"row-{i}" for i in range(n)])
    kept = bal.keep_decisions(keep_prob, data, uoff, seed=1)
    mean, sd = keep_prob.sum(), math.sqrt((keep_prob * (1 - keep_prob)).sum())
    assert 0.05 * n < mean < 0.95 * n  # a real sampling decision, not all-or-nothing
    assert abs(kept.sum() - mean) < 3 * sd
    assert not kept[keep_prob == 0].any() and kept[keep_prob == 1].all()
    again = bal.keep_decisions(keep_prob, data, uoff, seed=1)
    assert (again == kept).all()
    assert (bal.keep_decisions(keep_prob, data, uoff, seed=2) != kept).any()


def test_metaclip2_tail_fraction_and_threshold_by_hand():
    counts = np.array([0, 1, 2, 3, 4, 10, 80])  # 100 matches
    assert bal.tail_fraction(counts, 5) == pytest.approx(0.10)  # 1+2+3+4 below t=5
    assert bal.tail_fraction(counts, 11) == pytest.approx(0.20)
    # cumulative shares of the sorted counts: 0, .01, .03, .06, .10, .20, 1.0 -> closest to 0.09 is .10 at count 4
    assert bal.threshold_for_tail_fraction(counts, 0.09) == 4
    assert bal.threshold_for_tail_fraction(counts, 0.5) == 10
    assert bal.threshold_for_tail_fraction(np.zeros(3), 0.5) == 0.0


def test_bisect_solves_a_monotone_function():
    counts = np.array([1, 5, 50, 500, 5000])
    rows = [[0], [1, 4], [2], [3, 4], [4], [4], [2, 3]]
    offsets, ids = _csr(rows)

    def expected(t):
        return bal.keep_probabilities(offsets, ids, bal.entry_probabilities(counts, t)).sum()

    t = bal.bisect_increasing(expected, 3.5, 0.0, 5001.0)
    assert expected(t) == pytest.approx(3.5, abs=1e-9)
    assert bal.bisect_increasing(expected, 100, 0.0, 5001.0) == 5001.0  # unreachable: everything kept


def test_csr_take_and_curve():
    offsets, ids = _csr([[1, 2], [], [3], [4, 5, 6]])
    o, i = bal.csr_take(offsets, ids, np.array([3, 0, 1]))
    assert o.tolist() == [0, 3, 5, 5] and i.tolist() == [4, 5, 6, 1, 2]
    curve = bal.sorted_curve(np.array([0, 5, 100, 1, 30]), 10)
    assert curve["rank"] == [1, 2, 3, 4]
    assert curve["before"] == [100, 30, 5, 1] and curve["after"] == [10.0, 10.0, 5.0, 1.0]
    assert bal.sorted_curve(np.zeros(4), 10)["rank"] == []
