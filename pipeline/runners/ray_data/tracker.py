"""Following a Ray pass from the driver: small metadata rows in, split shards merged, progress out."""
from __future__ import annotations

import json
import time

from winnow.pipeline.rundir import INPUT_ROWS
from winnow.pipeline.runners.ray_data import blocks, session
from winnow.pipeline.stats import Progress
from winnow.stages.errors import WinnowError

PROGRESS_EVERY_S = 2.0


class Tracker:
    """Consumes a pass's metadata rows (one per shard piece written by ``blocks.write_block``).

    With ``merge`` a shard split over several blocks is merged into its part as soon as all its rows
    are in (a remote task, so rows never come to the driver); without, the pieces are kept for the
    caller (a group pass patches them in once the pass is over).
    """

    def __init__(self, spec: blocks.PassSpec, label: str, n_shards: int, progress: Progress,
                 merge: bool = True):
        self.spec, self.label, self.n_shards, self.progress, self.merge = spec, label, n_shards, progress, merge
        self.seen: set[int] = set()
        self.pieces: dict[int, list[dict]] = {}
        self.total: dict = {}
        self.done = 0
        self.merges: list = []
        self.t0 = self.last = time.perf_counter()
        self.reported: tuple | None = None

    def consume(self, ds) -> None:
        import ray

        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                self._add(row)
            if time.perf_counter() - self.last >= PROGRESS_EVERY_S:
                self._report()
        ray.get(self.merges)
        if self.merge and self.pieces:
            s, pieces = next(iter(self.pieces.items()))
            raise WinnowError(f"{self.label}: shard {s} produced {sum(p['rows'] for p in pieces)} of "
                              f"{pieces[0]['n']} rows")
        self._report()

    def _add(self, row: dict) -> None:
        self.seen.add(row["shard"])
        self.total = blocks.merge_block_stats(self.total, json.loads(row["stats"]))
        if row["done"]:
            self.done += 1
            return
        pieces = self.pieces.setdefault(row["shard"], [])
        pieces.append(row)
        if self.merge and sum(p["rows"] for p in pieces) == row["n"]:
            self._merge(self.pieces.pop(row["shard"]))

    def _merge(self, pieces: list[dict]) -> None:
        merged: dict = {}
        for p in pieces:
            merged = blocks.merge_block_stats(merged, json.loads(p["stats"]))
        shard_stats = blocks.stage_stats(merged, self.spec.steps)
        if self.spec.first:
            shard_stats[INPUT_ROWS] = {"rows": pieces[0]["n"]}
        partials = [p["partial"] for p in pieces] if self.spec.partials else None
        task = session.remote_task(blocks.merge_blocks)
        self.merges.append(task.remote(self.spec, pieces[0]["shard"], [p["block"] for p in pieces],
                                       shard_stats, partials))
        self.done += 1

    def _report(self) -> None:
        """One line per stage that decides in this pass: rows in, kept, rows/s of wall time so far."""
        self.last = time.perf_counter()
        state = (json.dumps(self.total), self.done)
        if not self.total or state == self.reported:
            return
        self.reported = state
        wall = self.last - self.t0
        unit = f"{self.label} {self.done}/{self.n_shards}" if self.merge else self.label
        preparing = {name for name, kind in self.spec.steps if kind == "prepare"}
        for name, st in blocks.stage_stats(self.total, self.spec.steps).items():
            if name not in preparing:
                self.progress.report(name, unit, st | {"seconds": wall})
