"""The same CPU-only pipeline through `winnow run --runner local` (reference) and `winnow run` (embedded Ray).

    python -m bench.ray_vs_local [--shards 64] [--rows-per-shard 2000] [--repeat 2] [--keep DIR]

The default is 128,000 rows: on 2 cores an embedded Ray costs ~7 s to start and stop, which a run of a
few seconds cannot amortise (at 64,000 rows the ratio measured 1.61x; at 128,000, 1.17x).

Data: `winnow sample` rows (drawn images, planted problems), generated once and laid out as
``--shards`` Parquet shards with distinct uids. Pipeline: examples/basic.yaml's basic_filter. Each
command runs as its own process, timed end to end (interpreter start, Ray start-up, outputs) with the
peak of its whole process tree's memory (proportional set size, summed over the driver, Ray's daemons
and workers, sampled every 0.2 s) — Ray's object store is shared memory and is counted through the
processes that map it. Manifests must be identical. Bar: Ray <= 1.5x the local wall time.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAR = 1.5


def make_data(path: str, shards: int, rows_per_shard: int, base_rows: int = 2000) -> None:
    """Distinct `winnow sample` rows are slow to draw (~8 ms each): draw ``base_rows`` and reuse them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from winnow.pipeline.tools.sample import generate

    base, _ = generate(min(base_rows, rows_per_shard * shards), seed=3, mismatch=0.0)
    os.makedirs(path, exist_ok=True)
    for k in range(shards):
        idx = [(k * rows_per_shard + i) % base.num_rows for i in range(rows_per_shard)]
        t = base.take(pa.array(idx))
        uid = pc.binary_join_element_wise(t["uid"], pa.scalar(f"-{k:04d}-"),
                                          pa.array([str(i) for i in range(rows_per_shard)]), "")
        pq.write_table(t.set_column(0, "uid", uid), os.path.join(path, f"shard-{k:05d}.parquet"))


class PeakMemory(threading.Thread):
    """Peak summed PSS of a process and all its descendants (Linux /proc, no extra package)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, sum(_pss(p) for p in _tree(self.pid)))
            self.stop.wait(0.2)


def _tree(root: int) -> list[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return found


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed_run(pipeline: str, out: str, runner: str) -> tuple[float, int, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_ADDRESS": ""}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "winnow.pipeline.cli", "run", pipeline, "--runner", runner,
                             "--output", out, "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    mem = PeakMemory(proc.pid)
    mem.start()
    log, _ = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    mem.stop.set()
    mem.join()
    if proc.returncode != 0:
        raise SystemExit(f"{runner} run failed:\n{log[-3000:]}")
    return wall, mem.peak, log


def manifest(out: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{out}/manifest/*.parquet"))]).sort_by("uid")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--rows-per-shard", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate the two runs this many times and keep each one's fastest (damps other load)")
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="winnow-bench-")
    try:
        data = os.path.join(work, "data")
        if not os.path.isdir(data):
            t0 = time.perf_counter()
            make_data(data, args.shards, args.rows_per_shard)
            print(f"data: {args.shards} shards x {args.rows_per_shard} rows in {time.perf_counter() - t0:.0f}s "
                  f"({sum(os.path.getsize(p) for p in glob.glob(data + '/*.parquet')) / 2**20:.0f} MiB)")
        pipeline = os.path.join(work, "basic.yaml")
        with open(os.path.join(REPO, "examples", "basic.yaml"), encoding="utf-8") as f:
            text = f.read()
        with open(pipeline, "w", encoding="utf-8") as f:
            f.write(text.replace("input: sample/", f"input: {data}/"))
        results: dict = {}
        for _ in range(max(1, args.repeat)):
            for runner in ("local", "ray"):
                out = os.path.join(work, f"out-{runner}")
                shutil.rmtree(out, ignore_errors=True)
                result = timed_run(pipeline, out, runner)
                if runner not in results or result[0] < results[runner][0]:
                    results[runner] = result
        same = manifest(os.path.join(work, "out-local")).equals(manifest(os.path.join(work, "out-ray")))
        rows = args.shards * args.rows_per_shard
        print(f"pipeline: basic_filter over {rows:,} rows, {os.cpu_count()} CPUs, best of {max(1, args.repeat)}, "
              f"load average now {os.getloadavg()[0]:.1f}")
        print(f"{'runner':<28}{'wall s':>8}{'rows/s':>10}{'peak MiB':>10}")
        for runner, label in (("local", "winnow run --runner local"), ("ray", "winnow run (embedded Ray)")):
            wall, peak, _ = results[runner]
            print(f"{label:<28}{wall:>8.1f}{rows / wall:>10,.0f}{peak / 2**20:>10,.0f}")
        ratio = results["ray"][0] / results["local"][0]
        print(f"Ray / local wall time: {ratio:.2f}x (bar <= {BAR}x) -> {'PASS' if ratio <= BAR else 'FAIL'}; "
              f"manifests identical: {same}")
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
