"""basic_filter throughput on the real 15,833 Conceptual Captions rows (caption-only), one core.

Bar (issue 2): >= 20,000 rows/s including fastText language ID. Reference measured in the same run:
a per-row loop that calls fastText once per caption (how most filtering scripts apply LID).
Run: `python -m bench.basic_filter_throughput` (needs ../shared/data).
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the bar says

from winnow.pipeline.inputs import list_shards, read_shard  # noqa: E402
from winnow.pipeline.plan import Step  # noqa: E402
from winnow.stages.filter.basic import BasicFilter  # noqa: E402

TSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "captions", "cc3m_val.tsv")


def main() -> int:
    if not os.path.exists(TSV):
        print(f"skipped: {TSV} not found")
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    stage = BasicFilter()
    stage.ensure_setup()
    repeats = 5
    t0 = time.perf_counter()
    rows = kept = 0
    for _ in range(repeats):  # includes reading the TSV into Arrow each time
        table = read_shard(list_shards(TSV)[0])
        for start in range(0, table.num_rows, stage.batch_size):
            out, st = Step(stage, "map").run(table.slice(start, stage.batch_size))
            rows += st["rows_in"]
            kept += st["kept"]
    ours = rows / (time.perf_counter() - t0)

    captions = read_shard(list_shards(TSV)[0])["caption"].to_pylist()
    model = stage._lid
    t0 = time.perf_counter()
    ref_kept = 0
    for cap in captions:
        label, _ = model.predict(cap.replace("\n", " "), k=1)
        if len(cap) > 5 and len(cap.split()) > 2 and label[0] == "__label__en":
            ref_kept += 1
    reference = len(captions) / (time.perf_counter() - t0)
    print(f"basic_filter: {ours:,.0f} rows/s over {rows:,} rows (kept {kept / rows:.1%}), one core, Arrow I/O included")
    print(f"reference per-row fastText loop: {reference:,.0f} rows/s (kept {ref_kept / len(captions):.1%})")
    print(f"ratio: {ours / reference:.2f}x; bar >= 20,000 rows/s: {'PASS' if ours >= 20_000 else 'FAIL'}")
    return 0 if ours >= 20_000 else 1


if __name__ == "__main__":
    sys.exit(main())
