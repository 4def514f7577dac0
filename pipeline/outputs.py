"""A run's decision record and training set from its final rows: manifest and kept views, provenance."""
from __future__ import annotations

import importlib.metadata
import platform

import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline import rowrefs
from winnow.pipeline.rundir import kept_part, manifest_part, write_parquet_atomic
from winnow.stages import storage
from winnow.stages.columns import REJECT_STAGE, live_mask

# Columns never copied into the manifest: bytes belong in kept/, not in the decision record.
MANIFEST_EXCLUDED_TYPES = (pa.binary(), pa.large_binary())


def manifest_view(table: pa.Table) -> pa.Table:
    """One row per input sample with scores and decision: everything but raw bytes."""
    keep = [f.name for f in table.schema if f.type not in MANIFEST_EXCLUDED_TYPES]
    return table.select(keep)


def kept_view(table: pa.Table) -> pa.Table:
    """Training-ready rows: kept only, with image bytes and captions."""
    if REJECT_STAGE not in table.column_names:
        return table
    return table.filter(pc.is_null(table[REJECT_STAGE]))


def write_table_outputs(table: pa.Table, stem: str, out: str, write_kept: bool, source: tuple | None = None) -> None:
    """manifest/part-STEM.parquet (+ kept/part-STEM.parquet) from a shard's final rows. ``source``, the
    input shard and column mapping, is given when the rows may lack the input's image bytes: the kept
    rows get theirs from the input (``rowrefs.attach``), read once, only for those rows."""
    write_parquet_atomic(manifest_view(table), manifest_part(out, stem))
    if write_kept:
        if source is not None:
            table = rowrefs.attach(table, *source, live_mask(table))
        write_parquet_atomic(kept_view(table), kept_part(out, stem))


def shard_outputs(part: str, stem: str, out: str, write_kept: bool, in_pass: bool,
                  source: tuple | None = None) -> tuple[int, int]:
    """(manifest rows, kept rows) of a shard, writing its outputs from its final part unless the runner
    wrote them beside the part (``in_pass``: both runners do in a final segment without a barrier, just
    before the part that marks the shard done, so a resumed run finds them too). ``source``: as for
    ``write_table_outputs``."""
    manifest, kept = manifest_part(out, stem), kept_part(out, stem)
    if not (in_pass and storage.exists(manifest) and (not write_kept or storage.exists(kept))):
        write_table_outputs(storage.read_parquet(part), stem, out, write_kept, source)
    rows = storage.read_metadata(manifest).num_rows
    if write_kept:
        return rows, storage.read_metadata(kept).num_rows
    decided = storage.read_parquet(manifest, columns=[REJECT_STAGE])[REJECT_STAGE]
    return rows, rows - pc.count(decided, mode="only_valid").as_py()


def package_versions() -> dict:
    names = ["pyarrow", "ray", "torch", "torchvision", "open_clip_torch", "transformers", "faiss-cpu",
             "fasttext-numpy2", "img2dataset", "pyahocorasick", "numpy", "pillow"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def input_listing(shards, rows: dict[int, int]) -> list[dict]:
    """The input as this run read it: per shard its path, size, fingerprint key, output stem and rows."""
    out = []
    for s in shards:
        st = storage.info(s.path)
        mtime = int(st.mtime.timestamp()) if st.mtime is not None else None
        out.append({"index": s.index, "path": storage.abspath(s.path), "format": s.format, "bytes": st.size,
                    "mtime": mtime, "key": s.key, "stem": s.stem, "rows": rows.get(s.index)})
    return out
