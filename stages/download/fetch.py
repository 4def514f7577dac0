"""Download stage: (url, caption) rows -> rows with image bytes, img2dataset doing the fetching.

Each batch is written as img2dataset input shards (row_id, url), run through img2dataset's
Downloader in a pool of spawned worker processes (each with its own thread pool), and its output
(one row per URL, as img2dataset's Parquet writer has it, written as Arrow IPC to be mapped back
without a decode) is joined back by row_id, so every input row ends with exactly one outcome: the image with
its sizes and sha256, or a rejection with a precise reason (http_404, timeout, refused_address,
robots_noai, decode_error, ...; see docs/download.md). Original bytes are kept unless a resize is
asked. The network policy (http/https only, no internal addresses, per-connection deadline, byte
cap) is enforced inside the workers' connections: see stages/download_safety.py.

``retry_failed`` reuses the successes of a previous run (``previous``) and downloads only the rest.
"""
from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import tempfile
import threading

import pyarrow as pa

from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import add_null_columns, set_column
from winnow.stages.download.previous import PreviousDownloads
from winnow.stages.download.reasons import classify, scheme_refusal
from winnow.stages.download.safety import NetworkPolicy
from winnow.stages.errors import WinnowError

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
IMG2DATASET_ROBOTS = ["noai", "noimageai", "noindex", "noimageindex"]
MAX_SHARD_ROWS = 2000  # a worker holds one shard's images until it writes them
OUTPUT_COLUMNS = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(),
                  "original_height": pa.int32(), "sha256": pa.string(), "download_error": pa.string()}


class Download(MapStage):
    name = "download"
    help = "fetch images with img2dataset (original bytes by default); safe by default; precise failure reasons"
    params = (
        Param("resize_mode", str, "no", "'no' keeps the original bytes; otherwise img2dataset's resize mode",
              choices=RESIZE_MODES),
        Param("image_size", int, 256, "target size when resize_mode is not 'no'", min=1),
        Param("encode_format", str, "jpg", "encoding of resized images", choices=("jpg", "png", "webp")),
        Param("min_image_size", int, 0, "reject images whose shorter side is smaller (too_small)", min=0),
        Param("max_bytes", int, 20_000_000, "reject bodies larger than this many bytes (too_large; 0 = no cap)",
              min=0),
        Param("max_pixels", int, 178_956_970, "reject images with more pixels, read from the header before "
              "decoding (too_many_pixels: decompression-bomb guard; 0 = no cap)", min=0),
        Param("timeout", float, 10.0, "seconds to connect and for each socket read", min=0.0, open_min=True),
        Param("deadline", float, 30.0, "hard limit in seconds per connection, connect to last byte",
              min=0.0, open_min=True),
        Param("retries", int, 0, "extra attempts per URL after a failure (img2dataset retries)", min=0),
        Param("max_redirects", int, 10, "redirects followed per URL", min=0),
        Param("processes", int, 0, "download worker processes (0 = auto: CPUs up to 8, 1 inside a Ray worker)",
              min=0),
        Param("threads", int, 64, "download threads per worker process", min=1),
        Param("user_agent_token", str, "img2dataset", "token in the User-Agent and matched by "
              "'X-Robots-Tag: <token>: noai' (img2dataset's, so opt-outs aimed at it apply)"),
        Param("respect_robots", bool, True, "reject images whose X-Robots-Tag has one of robots_directives"),
        Param("robots_directives", list, IMG2DATASET_ROBOTS, "X-Robots-Tag directives that forbid use"),
        Param("allow_private_networks", bool, False, "allow loopback/private/link-local addresses (tests)"),
        Param("retry_failed", bool, False, "reuse the successes found in 'previous'; download only the rest"),
        Param("previous", str, "", "previous run dir (or dir/glob of Parquet with uid, image, sha256)"),
        Param("tmp_dir", str, "", "where batches are staged for img2dataset (default: system temp dir)"),
    )
    requires = ("url",)
    resources = Resources(cpus=1)
    batch_size = 1024
    stateful = True  # setup() starts the worker pool once per worker
    reads_image = ()  # produces image; never reads an earlier one

    def validate(self):
        if self.retry_failed and not self.previous:
            raise WinnowError(f"stage '{self.instance_name}': retry_failed needs 'previous' (the earlier run dir)")

    def produces(self):
        return dict(OUTPUT_COLUMNS)

    def provenance(self):
        import importlib.metadata

        return {"img2dataset": importlib.metadata.version("img2dataset")}

    def worker_count(self) -> int:
        if self.processes:
            return self.processes
        if "RAY_RAYLET_PID" in os.environ:  # inside a Ray worker: Ray already runs one of us per CPU
            return 1
        return max(1, min(os.cpu_count() or 1, 8))

    def setup(self):
        self._pool = worker_pool(self.worker_count())
        self._previous = PreviousDownloads(self.previous) if self.retry_failed else None

    def close(self) -> None:
        """Forget the worker pool (shared by the stages of this process; it stops at exit)."""
        self.__dict__.pop("_pool", None)
        self._ready = False

    def __getstate__(self):  # a set-up stage travels (e.g. to Ray actors) without its pool
        state = {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_previous")}
        state["_ready"] = False
        return state

    def process_batch(self, table: pa.Table) -> pa.Table:
        urls = table["url"].to_pylist()
        n = len(urls)
        reasons = [scheme_refusal(u) for u in urls]
        todo = [i for i in range(n) if reasons[i] is None]
        parts: list[tuple[list[int], pa.Table, list[int]]] = []  # (batch positions, source, source rows)
        if self._previous is not None and todo:
            uids = table["uid"].to_pylist()
            found = self._previous.lookup([uids[i] for i in todo])
            where = {u: k for k, u in enumerate(found["uid"].to_pylist())}
            reused = [i for i in todo if uids[i] in where]
            parts.append((reused, found, [where[uids[i]] for i in reused]))
            todo = [i for i in todo if uids[i] not in where]
        if todo:
            results = self._download([(i, urls[i].strip()) for i in todo])
            pos = {r: k for k, r in enumerate(results["row_id"].to_pylist())}
            statuses, errors = results["status"].to_pylist(), results["error_message"].to_pylist()
            for i in todo:
                reasons[i] = classify(statuses[pos[i]], errors[pos[i]]) if i in pos else "no_result"
            failed = [(e or st or "")[:500] if st != "success" else None for st, e in zip(statuses, errors)]
            results = results.rename_columns(["image" if c == "jpg" else c for c in results.column_names])
            got = [i for i in todo if i in pos]
            parts.append((got, set_column(results, "download_error", pa.array(failed, pa.string())),
                          [pos[i] for i in got]))
        return self.reject(_place(table, parts), reasons)

    def _download(self, rows: list[tuple[int, str]]) -> pa.Table:
        """Run img2dataset over (row_id, url) rows; returns its output rows (row_id, status, ...)."""
        n_workers = self.worker_count()
        shard_rows = min(MAX_SHARD_ROWS, math.ceil(len(rows) / n_workers))
        tmp = tempfile.mkdtemp(prefix="winnow-download-", dir=self.tmp_dir or None)
        try:
            out_dir = os.path.join(tmp, "out")
            os.makedirs(out_dir)
            shards = [_write_shard(tmp, k, rows[s:s + shard_rows])
                      for k, s in enumerate(range(0, len(rows), shard_rows))]
            policy = NetworkPolicy(self.allow_private_networks, self.max_bytes, self.deadline, self.max_redirects)
            downloader = functools.partial(
                _run_shard, policy, out_dir, threads=self.threads, timeout=self.timeout, retries=self.retries,
                user_agent_token=self.user_agent_token or None,
                robots_directives=list(self.robots_directives) if self.respect_robots else None,
                max_pixels=self.max_pixels, min_image_size=self.min_image_size, resize_mode=self.resize_mode,
                image_size=self.image_size, encode_format=self.encode_format, shard_rows=shard_rows)
            return self._run_shards(downloader, shards, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_shards(self, downloader, shards: list[tuple[int, str]], out_dir: str) -> pa.Table:
        """Shards to the pool; each one's output is read as soon as it is done, while others still download.

        A shard img2dataset reports as failed is tried once more (as its own distributor does); if a
        worker process dies, the pool is replaced and the rows without output get no_result.
        """
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        tables: dict[int, pa.Table] = {}
        pending = {self._pool.submit(downloader, shard): 1 for shard in shards}
        try:
            while pending:
                done = next(as_completed(pending))
                attempt = pending.pop(done)
                ok, (shard_id, path) = done.result()
                if ok or attempt > 1:
                    tables[shard_id] = _read_results(out_dir, shard_id)
                else:
                    pending[self._pool.submit(downloader, (shard_id, path))] = attempt + 1
        except BrokenProcessPool:
            discard_pool(self._pool)
            self._pool = worker_pool(self.worker_count())
        # in shard order, each shard in row order: the rows' own order when every one came back
        return pa.concat_tables([tables[k] for k in sorted(tables)]) if tables else _RESULT_SCHEMA.empty_table()


def _run_shard(*args, **kwargs):
    """Runs in a worker: img2dataset is imported there only, never in the stage's own process
    (it pulls in torch via webdataset: seconds and hundreds of MB, per Ray actor otherwise)."""
    from winnow.stages.download.worker import run_shard

    return run_shard(*args, **kwargs)


def _warm_up() -> None:
    """Pool initializer: a worker imports img2dataset as it starts, not on its first shard."""
    import winnow.stages.download.worker  # noqa: F401


_POOLS: dict[int, object] = {}
_POOLS_LOCK = threading.Lock()


def worker_pool(n: int):
    """The process's pool of n download workers, started (and warmed up) on first use.

    Workers hold no per-stage state (each task carries its settings and policy), so every
    download stage in a process shares one pool per size: starting a worker costs seconds of
    img2dataset imports. Spawned, as img2dataset does: forking a process with threads is unsafe.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_warm_up)
            for f in [pool.submit(os.getpid) for _ in range(n)]:  # start all n now, not on demand
                f.result()
            if not _POOLS:
                atexit.register(_shutdown_pools)
            _POOLS[n] = pool
        return pool


def _shutdown_pools() -> None:
    """At exit, before module teardown (an executor collected then complains on stderr)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    if pools:
        _forget_dead_resource_tracker()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _forget_dead_resource_tracker() -> None:
    """A Ray worker that exits kills its child processes before Python's exit handlers run, multiprocessing's
    resource tracker included. The pool's semaphores would then start a new tracker only to unregister names
    it never saw, and it prints a KeyError traceback for each. Their own finalizers unlink them either way,
    so with the tracker gone the unregistering is skipped."""
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid is None:
        return
    try:
        gone = os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        gone = True
    if gone:
        resource_tracker.unregister = lambda name, rtype: None


def discard_pool(pool) -> None:
    with _POOLS_LOCK:
        for n, p in list(_POOLS.items()):
            if p is pool:
                del _POOLS[n]
    pool.shutdown(wait=False, cancel_futures=True)


def _write_shard(tmp: str, k: int, rows: list[tuple[int, str]]) -> tuple[int, str]:
    """An img2dataset input shard: the Arrow IPC file its Downloader reads."""
    path = os.path.join(tmp, f"{k}.feather")
    shard = pa.table({"row_id": pa.array([r[0] for r in rows], pa.int64()),
                      "url": pa.array([r[1] for r in rows], pa.string())})
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, shard.schema) as writer:
        writer.write_table(shard)
    return k, path


_RESULT_COLUMNS = ["row_id", "status", "error_message", "width", "height", "original_width", "original_height",
                   "sha256", "jpg"]
_RESULT_SCHEMA = pa.schema([("row_id", pa.int64()), ("status", pa.string()), ("error_message", pa.string())]
                           + [(c, OUTPUT_COLUMNS[c]) for c in _RESULT_COLUMNS[3:-1]] + [("jpg", pa.binary())])


def _read_results(out_dir: str, shard_id: int) -> pa.Table:
    """One shard's img2dataset output, memory-mapped: a row per URL it finished (failures included)."""
    path = os.path.join(out_dir, f"{shard_id:05d}.arrow")  # ArrowSampleWriter's name (oom_shard_count=5)
    if not os.path.exists(path):
        return _RESULT_SCHEMA.empty_table()
    # Zero-copy: the mapping outlives the file's removal, and _place copies the rows out once.
    return pa.ipc.open_file(pa.memory_map(path)).read_all().select(_RESULT_COLUMNS).cast(_RESULT_SCHEMA)


def _place(table: pa.Table, parts: list[tuple[list[int], pa.Table, list[int]]]) -> pa.Table:
    """Set OUTPUT_COLUMNS on ``table``: batch position ``positions[j]`` gets row ``rows[j]`` of its part's
    source. One Arrow take per column over the (zero-copy) concatenated sources, so the image bytes
    are copied at most once and never through Python; positions in no part get nulls."""
    import numpy as np

    schema = pa.schema(list(OUTPUT_COLUMNS.items()))
    index = np.full(table.num_rows, -1, np.int64)
    offset = 0
    for positions, source, rows in parts:
        index[positions] = offset + np.asarray(rows, np.int64)
        offset += source.num_rows
    sources = pa.concat_tables([add_null_columns(source, OUTPUT_COLUMNS).select(schema.names).cast(schema)
                                for _, source, _ in parts] or [schema.empty_table()])
    if sources.num_rows == len(index) and np.array_equal(index, np.arange(len(index))):
        for name in schema.names:  # the usual case, every row downloaded: no copy of the bytes at all
            table = set_column(table, name, sources[name])
        return table
    take = pa.array(index, mask=index < 0)
    for name in schema.names:
        table = set_column(table, name, sources[name].take(take))
    return table
