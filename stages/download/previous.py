"""``retry_failed``: find what a previous run already downloaded, so only the rest is fetched again.

Rows are matched by uid (stable across runs of the same input). A row counts as downloaded when
its ``sha256`` is set (the download stage sets it only on success); its bytes and sizes are then
reused without a request. Reads a run dir's checkpoint of the download's segment (both runners
write it) or its ``kept/``, or any Parquet dir/glob.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages import storage
from winnow.stages.errors import WinnowError

SCHEMA = pa.schema([("uid", pa.string()), ("image", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                    ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string())])


class PreviousDownloads:
    """uid -> outcome columns of the rows a previous run downloaded successfully (sha256 set)."""

    COLUMNS = SCHEMA.names

    def __init__(self, spec: str):
        self.files = previous_files(spec)
        self.where: dict[str, int] = {}
        for k, path in enumerate(self.files):
            names = storage.read_schema(path).names
            missing = [c for c in ("uid", "sha256", "image") if c not in names]
            if missing:
                raise WinnowError(f"previous {path}: no '{missing[0]}' column; point 'previous' at a run dir "
                                  "or at Parquet written by the download stage")
            t = storage.read_parquet(path, columns=["uid", "sha256"])
            for uid in t.filter(pc.is_valid(t["sha256"]))["uid"].to_pylist():
                self.where[uid] = k

    def lookup(self, uids: list[str]) -> pa.Table:
        """The previous rows (uid + outcome columns) of those uids that were downloaded."""
        by_file: dict[int, set] = {}
        for uid in uids:
            if uid in self.where:
                by_file.setdefault(self.where[uid], set()).add(uid)
        tables = [storage.read_parquet(self.files[k], columns=self.COLUMNS, filters=pc.field("uid").isin(list(wanted)))
                  for k, wanted in sorted(by_file.items())]
        found = pa.concat_tables([t.cast(SCHEMA) for t in tables] or [SCHEMA.empty_table()])
        return found.filter(pc.is_valid(found["image"]))


def previous_files(spec: str) -> list[str]:
    """Parquet files holding a previous run's downloads.

    For a run dir: the checkpoint of the segment the download stage ran in (the first ``work/seg-K``
    whose parts have ``image`` and ``sha256``: segment 0, unless a global stage such as metaclip runs
    before the download), which has every row that reached it with its bytes whatever later stages
    decided; failing that, ``kept/``. Otherwise ``spec`` is a directory or glob of Parquet files.
    """
    if storage.isfile(storage.join(spec, "pipeline.json")) or storage.isdir(storage.join(spec, "work")):
        segments = {int(d.rsplit("-", 1)[1]): storage.join(spec, "work", d)
                    for d in storage.listdir(storage.join(spec, "work"))
                    if d.startswith("seg-") and d.rsplit("-", 1)[1].isdigit()}
        for k in sorted(segments):
            files = parquet_in(segments[k])
            if files and {"image", "sha256"} <= set(storage.read_schema(files[0]).names):
                return files
        files = parquet_in(storage.join(spec, "kept"))
        if files:
            return files
    files = parquet_in(spec) if storage.isdir(spec) else storage.glob(spec)
    if not files:
        raise WinnowError(f"previous {spec}: no Parquet files found (expected a run dir, its kept/, or a glob)")
    return files


def parquet_in(directory: str) -> list[str]:
    return [p for p in storage.glob(storage.join(directory, "*.parquet")) if not p.endswith(".grouped.parquet")]
