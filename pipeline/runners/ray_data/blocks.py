"""Per-shard checkpoints for the Ray runner: blocks in, one part per input shard out. No ray here.

Ray Data moves rows in blocks that mix and split input shards, so every row carries bookkeeping
columns while a pass runs: its shard (``__shard``), its position in the shard (``__row``), the
shard's row count (``__n``), whether it was live when the pass started (``__live_in``), and per
step ``__sec<j>`` (that step's time on the row's batch, spread over the batch's rows). Stages never
see these columns. The writer at the end of a pass splits a block by shard: a shard whose rows are
all in the block becomes its part file at once; otherwise the piece goes to a block file and the
driver has the pieces merged once the shard is complete. Counts are derived from the rows
themselves, so a retried task cannot count twice. Part files, their ``.stats.json`` and names are
the local runner's, so either runner resumes the other's run directory.
"""
from __future__ import annotations

import json
import pickle
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline import outputs, rowrefs, rundir
from winnow.pipeline import stats as stats_mod
from winnow.pipeline.plan import global_partial
from winnow.pipeline.rundir import FINGERPRINT, INPUT_ROWS, LIVE_IN, NROWS, ROW, SEC, SHARD
from winnow.stages import storage
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE, live_mask


def is_internal(name: str) -> bool:
    return name in (SHARD, ROW, NROWS, LIVE_IN) or (name.startswith(SEC) and name[len(SEC):].isdigit())


def add_internal(table: pa.Table, shard_index: int) -> pa.Table:
    n = table.num_rows
    table = table.append_column(SHARD, pa.array(np.full(n, shard_index, np.int32)))
    table = table.append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    table = table.append_column(NROWS, pa.array(np.full(n, n, np.int64)))
    return table.append_column(LIVE_IN, live_mask(table))


def split_internal(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(what stages see, the bookkeeping columns) — same rows, same order."""
    names = [n for n in table.column_names if is_internal(n)]
    return table.drop_columns(names), table.select(names)


def join_internal(view: pa.Table, internal: pa.Table) -> pa.Table:
    for name in internal.column_names:
        view = view.append_column(name, internal[name])
    return view


def add_seconds(table: pa.Table, index: int, seconds: float) -> pa.Table:
    n = max(table.num_rows, 1)
    return table.append_column(f"{SEC}{index}", pa.array(np.full(table.num_rows, seconds / n)))


@dataclass
class PassSpec:
    """What the writer of one pass needs: where parts go and which steps ran (name, kind) in order."""

    seg_dir: str
    block_dir: str
    steps: list[tuple[str, str]]  # kind: map, prepare, apply or group
    suffix: str = ".parquet"  # ".grouped.parquet" for a group pass
    partials: bool = False  # the pass ends with a global stage's prepare: record its partials
    shard_stats: bool = True  # write part-*.parquet.stats.json (the local runner's resume format)
    first: bool = False  # the first segment records each shard's input row count
    whole_shards: bool = True  # False for a group pass: only some rows travel, pieces are patched in later
    final_outputs: tuple[str, bool] | None = None  # (run dir, write_kept): the run's last pass writes them too
    stems: dict[int, str] = field(default_factory=dict)  # shard index -> its output stem
    fingerprints: dict[int, str] = field(default_factory=dict)  # shard index -> what produces its part
    # Parts and block files hold no input image bytes (pipeline/rowrefs.py) unless a stage produced them
    drop_image: bool = False
    # shard index -> (input Shard, column mapping) when the kept rows (final_outputs) take bytes from the input
    kept_inputs: dict[int, tuple] | None = None

    def part(self, stem: str) -> str:
        return storage.join(self.seg_dir, f"part-{stem}{self.suffix}")


# -- counting --------------------------------------------------------------------------------
def block_stats(table: pa.Table, spec: PassSpec) -> dict:
    """Mergeable counts of one piece: live rows at pass start, rows newly rejected and all rejections
    per stage of this pass (by reason), seconds per step."""
    names = {name for name, _ in spec.steps}
    live_in = table[LIVE_IN].to_numpy(zero_copy_only=False)
    stage = table[REJECT_STAGE].to_pylist()
    reason = table[REJECT_REASON].to_pylist()
    new: Counter = Counter()
    rej: dict[str, Counter] = {}
    for i, s in enumerate(stage):
        if s in names:
            rej.setdefault(s, Counter())[reason[i]] += 1
            if live_in[i]:
                new[s] += 1
    secs = [float(pc.sum(table[f"{SEC}{j}"]).as_py() or 0.0) if f"{SEC}{j}" in table.column_names else 0.0
            for j in range(len(spec.steps))]
    return {"live_in": int(live_in.sum()), "new": dict(new), "rej": {k: dict(v) for k, v in rej.items()},
            "sec": secs}


def merge_block_stats(a: dict, b: dict) -> dict:
    if not a:
        return b
    rej = {k: dict(Counter(a["rej"].get(k, {})) + Counter(b["rej"].get(k, {}))) for k in {*a["rej"], *b["rej"]}}
    return {"live_in": a["live_in"] + b["live_in"], "new": dict(Counter(a["new"]) + Counter(b["new"])),
            "rej": rej, "sec": [x + y for x, y in zip(a["sec"], b["sec"])]}


def stage_stats(bs: dict, steps: list[tuple[str, str]]) -> dict[str, dict]:
    """Per-stage stats exactly as the local runner's Step.run/run_steps count them."""
    by_stage: dict[str, dict] = {}
    before: set[str] = set()
    for j, (name, kind) in enumerate(steps):
        if kind == "prepare":  # decisions (and their counts) come after the barrier
            st = {"rows_in": 0, "kept": 0, "rejected": {}, "seconds": bs["sec"][j]}
        else:
            rows_in = bs["live_in"] - sum(bs["new"].get(n, 0) for n in before)
            rejected = bs["rej"].get(name, {})
            st = {"rows_in": rows_in, "kept": rows_in - sum(rejected.values()), "rejected": rejected,
                  "seconds": bs["sec"][j]}
        by_stage[name] = stats_mod.merge(by_stage.get(name, {}), st)
        before.add(name)
    return by_stage


# -- writing ---------------------------------------------------------------------------------
def write_block(table: pa.Table, spec: PassSpec, partial_stage=None) -> pa.Table:
    """The end of a pass, run where the block is: returns one small metadata row per shard piece."""
    meta = {"shard": [], "n": [], "rows": [], "block": [], "stats": [], "partial": [], "done": []}
    for s, piece in _pieces_by_shard(table):
        n = int(piece[NROWS][0].as_py())
        bs = block_stats(piece, spec)
        view, internal = split_internal(piece)
        partial = global_partial(partial_stage, view) if spec.partials else None
        done = spec.whole_shards and piece.num_rows == n
        block = None
        if done:
            rows = internal[ROW].to_numpy()
            in_order = bool(np.all(rows[1:] > rows[:-1]))  # the usual case: no copy needed
            shard_stats = stage_stats(bs, spec.steps) | ({INPUT_ROWS: {"rows": n}} if spec.first else {})
            write_shard(spec, s, view if in_order else view.take(pc.sort_indices(internal[ROW])), shard_stats,
                        [partial] if spec.partials else None)
        else:
            first_row = int(pc.min(internal[ROW]).as_py())
            block = storage.join(spec.block_dir, f"{int(s):05d}-{first_row:012d}.parquet")
            rundir.write_parquet_atomic(_as_stored(view, spec).append_column(ROW, internal[ROW]), block)
        for key, value in (("shard", int(s)), ("n", n), ("rows", piece.num_rows), ("block", block),
                           ("stats", json.dumps(bs)), ("done", done),
                           ("partial", pickle.dumps(partial) if spec.partials and not done else None)):
            meta[key].append(value)
    return pa.table(meta, schema=META_SCHEMA)


def _pieces_by_shard(table: pa.Table):
    """(shard, rows of that shard) per shard in the block: zero-copy slices when a shard's rows are
    contiguous (the usual case), a copy only when a batch interleaved shards."""
    shard_col = table[SHARD].to_numpy()
    for s in np.unique(shard_col):
        idx = np.flatnonzero(shard_col == s)
        if idx[-1] - idx[0] + 1 == len(idx):
            yield int(s), table.slice(int(idx[0]), len(idx))
        else:
            yield int(s), table.take(pa.array(idx))


META_SCHEMA = pa.schema([("shard", pa.int32()), ("n", pa.int64()), ("rows", pa.int64()), ("block", pa.string()),
                         ("stats", pa.string()), ("partial", pa.binary()), ("done", pa.bool_())])


def merge_blocks(spec: PassSpec, index: int, blocks: list[str], shard_stats: dict | None,
                 partials: list[bytes] | None) -> None:
    """One shard's pieces -> its part, rows back in input order; the block files are removed."""
    table = pa.concat_tables([storage.read_parquet(p) for p in blocks], promote_options="permissive")
    table = table.take(pc.sort_indices(table[ROW])).drop_columns([ROW])
    write_shard(spec, index, table, shard_stats, [pickle.loads(p) for p in partials] if partials is not None else None)
    for p in blocks:
        storage.remove(p)


def write_shard(spec: PassSpec, index: int, table: pa.Table, shard_stats: dict | None, partials: list | None) -> None:
    """Partials and stats first, the part last: the part file is the shard's completion marker."""
    stem = spec.stems[index]
    if partials is not None:
        rundir.write_bytes_atomic(pickle.dumps(partials), rundir.partials_path(spec.seg_dir, stem))
    if spec.shard_stats and shard_stats is not None:
        stats = {FINGERPRINT: spec.fingerprints[index], **shard_stats}
        rundir.write_json_atomic(stats, spec.part(stem) + ".stats.json")
    if spec.final_outputs is not None:
        source = spec.kept_inputs.get(index) if spec.kept_inputs is not None else None
        outputs.write_table_outputs(table, stem, *spec.final_outputs, source)
    rundir.write_parquet_atomic(_as_stored(table, spec), spec.part(stem))


def _as_stored(table: pa.Table, spec: PassSpec) -> pa.Table:
    return rowrefs.without_bytes(table) if spec.drop_image else table
