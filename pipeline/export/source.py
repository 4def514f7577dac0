"""A finished run as an export reads it: its records, its kept rows in export order, sample keys and formats.

Bytes come from OUT/kept/ only. The run's input is not a clean second source: images a `download` stage
fetched are in no input file, and the input may have changed since the run. So an export that needs bytes
and finds no kept set says so in one line.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pyarrow as pa

from winnow.pipeline import rundir
from winnow.stages import storage
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE
from winnow.stages.errors import WinnowError

# No dots (webdataset splits keys at the first one), no slashes; short enough for a ustar name with ".json".
SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,90}")
BOOKKEEPING = ("__winnow",)


def check_run(run_dir: str) -> None:
    if not storage.isdir(run_dir):
        raise WinnowError(f"run directory {run_dir}: not found")
    if not storage.isfile(rundir.pipeline_record_path(run_dir)) or not storage.isdir(rundir.manifest_dir(run_dir)):
        raise WinnowError(f"run directory {run_dir}: not a finished winnow run (no pipeline.json or manifest/)")


def read_record(run_dir: str, path: str) -> dict:
    try:
        return rundir.read_json(path)
    except (OSError, ValueError) as exc:
        raise WinnowError(f"run directory {run_dir}: cannot read {os.path.basename(path)} ({exc})") from None


def parquet_files(folder: str, record: dict | None = None) -> list[str]:
    """A run's parts in name order: the export order when not shuffled (names follow the input shards).

    With the run's record, the parts are the ones its input listing names, each asked for by name: a
    store's listing may lag behind its writes, and a part missing from a listing would silently shrink
    the export. A part the record names that is absent is one line."""
    stems = [i.get("stem") for i in (record or {}).get("inputs", [])]
    if not stems or not all(stems):
        return sorted(storage.join(folder, n) for n in storage.listdir(folder) if n.endswith(".parquet"))
    parts = sorted(storage.join(folder, f"part-{stem}.parquet") for stem in stems)
    missing = next((p for p in parts if not storage.exists(p)), None)
    if missing:
        raise WinnowError(f"run directory: {missing} is missing, though the run's pipeline.json lists its shard; "
                          "rerun the pipeline to rewrite it")
    return parts


def sample_key(uid: str) -> str:
    """The webdataset key of a sample: the uid itself when it is safe, else '~' + a 128-bit hash of it.
    A safe uid never starts with '~', so two uids never share a key (up to a hash collision)."""
    if SAFE_KEY.fullmatch(uid):
        return uid
    return "~" + hashlib.blake2b(uid.encode("utf-8"), digest_size=16).hexdigest()


def sniff(data: bytes | None) -> str | None:
    """The image format by its magic bytes, as the extension open_clip's ``--image-key`` looks for."""
    if not data:
        return None
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def shuffle_rank(uids: list[str], seed: int) -> np.ndarray:
    """An order keyed on (seed, uid) by a hash, not RNG state: the same on every run and for any sharding."""
    keys = [hashlib.blake2b(f"{seed}\x1f{u}".encode("utf-8"), digest_size=8).digest() for u in uids]
    return np.array(sorted(range(len(uids)), key=lambda i: (keys[i], uids[i])), dtype=np.int64)


class KeptSet:
    """OUT/kept/: the training caption column (caption_mix's output when it ran), the meta columns, the rows."""

    def __init__(self, run_dir: str):
        check_run(run_dir)
        folder = rundir.kept_dir(run_dir)
        self.record = read_record(run_dir, rundir.pipeline_record_path(run_dir))
        # An earlier run's kept/ may remain (emptied) after a rerun without it: the record decides.
        if not storage.isdir(folder) or not self.record.get("config", {}).get("write_kept", True):
            raise WinnowError(f"run directory {run_dir}: no kept set (kept/); this export needs the kept rows "
                              f"with image bytes: rerun with write_kept: true (`winnow stage ... --kept`)")
        self.run_dir, self.parts = run_dir, parquet_files(folder, self.record)
        schemas = [storage.read_schema(p) for p in self.parts]
        self.schema = schemas[0] if schemas else pa.schema([])
        self.counts = [storage.read_metadata(p).num_rows for p in self.parts]
        names = set(self.schema.names)
        if self.parts and "image" not in names:
            raise WinnowError(f"run directory {run_dir}: kept/ has no 'image' column (no image bytes to export)")
        self.text_column = self._text_column(names)
        self.numeric = [f.name for f in self.schema if _is_numeric(f.type) and not f.name.startswith(BOOKKEEPING)]
        self.provenance = [n for n in self.schema.names if n.startswith("caption") and n != self.text_column]

    def _text_column(self, names: set[str]) -> str:
        """caption_mix's output column (``caption_train`` unless renamed) when caption_mix ran, else caption."""
        stages = self.record.get("config", {}).get("stages", [])
        mixed = [s.get("output_column", "caption_train") for s in stages if s.get("stage") == "caption_mix"]
        for column in mixed[::-1] + ["caption"]:
            if column in names:
                return column
        if not self.parts:
            return "caption"
        raise WinnowError(f"run directory {self.run_dir}: kept/ has no caption column ('caption' or caption_mix's)")

    @property
    def num_rows(self) -> int:
        return sum(self.counts)

    def scalar_columns(self) -> list[str]:
        """Columns with one plain value per row (what a meta record or a Hugging Face column can hold)."""
        skip = {"image", REJECT_STAGE, REJECT_REASON}
        return [f.name for f in self.schema if f.name not in skip and not f.name.startswith(BOOKKEEPING)
                and (_is_numeric(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]

    def tables(self, columns: list[str], block: int, shuffle: bool, seed: int):
        """The kept rows as tables of at most ``block`` rows, in export order. Unshuffled: part by part, one
        part in memory at a time. Shuffled: the uids of every part, ranked by (seed, uid); each block of
        ranks takes its rows from the parts that hold them (one block's rows in memory)."""
        if not shuffle:
            for part in self.parts:
                for batch in storage.parquet_file(part).iter_batches(batch_size=block, columns=columns):
                    yield pa.Table.from_batches([batch])
            return
        uids = [u for p in self.parts for u in storage.read_parquet(p, columns=["uid"])["uid"].to_pylist()]
        order = shuffle_rank(uids, seed)
        starts = np.cumsum([0] + self.counts)
        for lo in range(0, len(order), block):
            ranks = order[lo:lo + block]
            owner = np.searchsorted(starts, ranks, side="right") - 1
            pieces, where = [], np.empty(len(ranks), np.int64)
            offset = 0
            for k in np.unique(owner):
                mine = np.flatnonzero(owner == k)
                table = storage.read_parquet(self.parts[k], columns=columns).take(pa.array(ranks[mine] - starts[k]))
                pieces.append(table)
                where[mine] = np.arange(offset, offset + len(mine))
                offset += len(mine)
            yield pa.concat_tables(pieces).take(pa.array(where))


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
