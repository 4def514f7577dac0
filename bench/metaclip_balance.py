"""MetaCLIP balancing for 10M rows on one core: counts -> probabilities -> (seed, uid)-keyed decisions.

Rows carry Zipf-distributed entry ids over a 338k-entry list (1-8 entries each, as matched captions do) and
string uids, as Arrow arrays like the stage sees. Timed: decoding the Arrow columns, global per-entry counts,
solving t for a 30% target on a 100k uid-hash sample, entry probabilities, keep probabilities, uid hashing and
decisions. Reference figure measured in the same run: MetaCLIP's curate loop (``1 - np.prod(1 - probs[ids])``
then ``random.random()`` per row) on 200k rows, scaled to the same row count.

    python -m bench.metaclip_balance [--rows 10000000]
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--entries", type=int, default=338_119)
    ap.add_argument("--target-fraction", type=float, default=0.3)
    args = ap.parse_args()
    pa.set_cpu_count(1)

    from winnow.kernels import balance as bal
    from winnow.stages.balance.entries import entries_csr, utf8_buffers
    from winnow.stages.balance.metaclip import SAMPLE_SALT

    entries_col, uids = _synthetic(args.rows, args.entries)
    print(f"{args.rows:,} rows, {len(entries_col.values):,} matches over {args.entries:,} entries")
    marks = [("start", time.process_time())]

    def mark(name):
        marks.append((name, time.process_time()))

    offsets, ids = entries_csr(entries_col)
    data, uoff = utf8_buffers(uids)
    mark("Arrow -> numpy CSR + uid bytes")
    counts = np.bincount(ids, minlength=args.entries)
    mark("global counts (bincount)")
    hashes = bal.hash_strings(data, uoff, 0, SAMPLE_SALT)
    sample_rows = bal.smallest_k(hashes, 100_000)
    s_off, s_ids = bal.csr_take(offsets, ids, sample_rows)
    target = args.target_fraction * args.rows

    def expected(t):
        return bal.keep_probabilities(s_off, s_ids, bal.entry_probabilities(counts, t)).sum() * args.rows / 100_000

    t = bal.bisect_increasing(expected, target, 0.0, float(counts.max()) + 1)
    mark("solve t for the target (100k-row sample)")
    probs = bal.entry_probabilities(counts, t)
    mark("entry probabilities")
    keep_prob = bal.keep_probabilities(offsets, ids, probs)
    mark("keep probabilities 1 - prod(1 - p_e)")
    kept = bal.keep_decisions(keep_prob, data, uoff, seed=0)
    mark("uid hash + decisions")
    total = marks[-1][1] - marks[0][1]
    for (_, a), (name, b) in zip(marks, marks[1:]):
        print(f"  {name:<42} {b - a:6.2f} s")
    print(f"ours: {args.rows:,} rows balanced in {total:.2f} s CPU (t = {t:,.2f}; kept {kept.sum():,} = "
          f"{kept.mean():.4f}, expected {keep_prob.sum() / args.rows:.4f})")

    # the reference's per-row loop, on a slice, scaled
    n_ref = min(200_000, args.rows)
    t0 = time.process_time()
    rng = random.Random(0)
    for i in range(n_ref):
        row_ids = ids[offsets[i]:offsets[i + 1]]
        prob = 1.0 - np.prod(1.0 - probs[row_ids])
        if prob < rng.random():
            continue
    ref = (time.process_time() - t0) * args.rows / n_ref
    print(f"reference: MetaCLIP's per-row curate loop, {n_ref:,} rows scaled to {args.rows:,}: {ref:.1f} s "
          f"(ours is {ref / total:.0f}x faster)")


def _synthetic(rows: int, n_entries: int) -> tuple[pa.Array, pa.Array]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, rows)
    ids = np.minimum(rng.zipf(1.25, int(lengths.sum())) - 1, n_entries - 1).astype(np.int32)
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    entries = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    uids = pc.binary_join_element_wise("s0-", pa.array(np.arange(rows)).cast(pa.string()), "")
    return entries, uids


if __name__ == "__main__":
    main()
