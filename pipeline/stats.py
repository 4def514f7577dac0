"""Per-stage counters, mergeable per unit of work (a shard, a Ray block) by plain addition."""
from __future__ import annotations

import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.columns import REJECT_REASON, REJECT_STAGE


def count_stage(before_live: int, after: pa.Table, stage_name: str, seconds: float) -> dict:
    """Stats for one stage on one batch: live rows in, kept, and rejections this stage made by reason."""
    mask = pc.equal(after[REJECT_STAGE], stage_name) if REJECT_STAGE in after.column_names else None
    reasons: Counter = Counter()
    if mask is not None:
        mask = pc.fill_null(mask, False)
        for r in after.filter(mask)[REJECT_REASON].to_pylist():
            reasons[r] += 1
    rejected = sum(reasons.values())
    return {"rows_in": before_live, "kept": before_live - rejected, "rejected": dict(reasons),
            "seconds": seconds}


def merge(a: dict, b: dict) -> dict:
    """Add two stats dicts of the same stage."""
    out = {"rows_in": a.get("rows_in", 0) + b.get("rows_in", 0), "kept": a.get("kept", 0) + b.get("kept", 0),
           "seconds": a.get("seconds", 0.0) + b.get("seconds", 0.0)}
    rej = Counter(a.get("rejected", {}))
    rej.update(b.get("rejected", {}))
    out["rejected"] = dict(sorted(rej.items()))
    return out


def finish(stats: dict) -> dict:
    """Add derived throughput (rows/s) once all parts are merged."""
    out = dict(stats)
    secs = out.get("seconds", 0.0)
    out["rows_per_s"] = round(out["rows_in"] / secs, 1) if secs > 0 else None
    out["seconds"] = round(secs, 3)
    return out


class Progress:
    """One line per stage and unit of work on stderr: rows in/kept and rows/s."""

    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled = enabled
        self.stream = stream
        self.t0 = time.perf_counter()

    def report(self, stage: str, unit: str, stats: dict) -> None:
        if not self.enabled:
            return
        secs = stats.get("seconds") or 0.0
        rate = f"{stats['rows_in'] / secs:,.0f} rows/s" if secs > 0 else "-"
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {stage:<20} {unit:<14} in {stats['rows_in']:>8,}  "
              f"kept {stats['kept']:>8,}  {rate}", file=self.stream, flush=True)
