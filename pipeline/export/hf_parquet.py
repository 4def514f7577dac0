"""The kept set as a Hugging Face dataset repo: ``data/train-XXXXX-of-YYYYY.parquet`` + a dataset card.

The image column is ``struct<bytes: binary, path: string>`` and the schema carries ``huggingface`` metadata
(``{"info": {"features": ...}}`` with ``{"_type": "Image"}``), which is what makes ``datasets`` decode it to a
PIL image instead of showing a struct. ``text`` is the training caption (caption_mix's when it ran); every
other column with one plain value per row (uid, url, scores, caption provenance) follows as it is. Each file
is written under a temp name and renamed; the card last.
"""
from __future__ import annotations

import json
import math
import os
import re

import pyarrow as pa

from winnow.pipeline import rundir
from winnow.pipeline.export.card import dataset_card
from winnow.pipeline.export.source import KeptSet, sample_key, sniff
from winnow.pipeline.export.spec import ExportSpec
from winnow.stages import storage

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PART_NAME = re.compile(r"train-\d{5}-of-\d{5}\.parquet(\.tmp-\d+)?")
# Arrow type -> the `datasets` Value dtype of the same type (Value("float32") is Arrow's "float", ...)
VALUE_DTYPES = {pa.string(): "string", pa.large_string(): "large_string", pa.bool_(): "bool",
                pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
                **{getattr(pa, t)(): t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                                 "uint64")}}


def export_parquet(run_dir: str, spec: ExportSpec, seed: int) -> dict:
    kept = KeptSet(run_dir)
    folder = rundir.export_dir(run_dir, spec.output, spec.format)
    rundir.ensure_writable_dir(storage.join(folder, "data"))
    card = rundir.hf_card_path(folder)
    if storage.exists(card):  # the card marks the export done: removed first, written last
        storage.remove(card)
    per_file = spec.samples_per_shard
    count = max(1, math.ceil(kept.num_rows / per_file))
    names = {os.path.basename(rundir.hf_part_path(folder, i, count)) for i in range(count)}
    data_dir = storage.join(folder, "data")
    for name in storage.listdir(data_dir):  # parts of an earlier export with another file count, or killed mid-write
        if PART_NAME.fullmatch(name) and name not in names:
            storage.remove(storage.join(data_dir, name))
    extra = [c for c in kept.scalar_columns() if c not in ("image",)]
    columns = list(dict.fromkeys(["uid", "image", kept.text_column, *extra]))
    schema = hf_schema(kept.schema, extra)
    pending, index = [], 0
    for table in kept.tables(columns, per_file, spec.shuffle, seed):
        pending.append(table)
        while sum(t.num_rows for t in pending) >= per_file:
            whole = pa.concat_tables(pending)
            _write_part(whole.slice(0, per_file), kept.text_column, extra, schema,
                        rundir.hf_part_path(folder, index, count))
            pending, index = [whole.slice(per_file)], index + 1
    if index < count:  # the last, shorter file (or the only, empty one)
        rest = pa.concat_tables(pending) if pending else _empty(kept.schema, columns)
        _write_part(rest, kept.text_column, extra, schema, rundir.hf_part_path(folder, index, count))
    size = sum(storage.getsize(rundir.hf_part_path(folder, i, count)) for i in range(count))
    rundir.write_bytes_atomic(dataset_card(run_dir, kept, schema, count, size).encode("utf-8"), card)
    return {"format": spec.format, "output": folder, "samples": kept.num_rows, "files": count}


def hf_schema(kept_schema: pa.Schema, extra: list[str]) -> pa.Schema:
    fields = [pa.field("image", IMAGE_TYPE), pa.field("text", pa.string())]
    fields += [pa.field(c, kept_schema.field(c).type) for c in extra if c != "text"]
    features = {"image": {"_type": "Image"}}
    features |= {f.name: {"dtype": VALUE_DTYPES.get(f.type, "string"), "_type": "Value"} for f in fields[1:]}
    meta = {"info": {"features": features}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(meta)})


def _empty(kept_schema: pa.Schema, columns: list[str]) -> pa.Table:
    """No kept rows (or no kept parts at all): one empty file still, so the repo loads as an empty split."""
    types = {"image": pa.binary()} | {f.name: f.type for f in kept_schema}
    return pa.schema([pa.field(c, types.get(c, pa.string())) for c in columns]).empty_table()


def _write_part(table: pa.Table, text_col: str, extra: list[str], schema: pa.Schema, path: str) -> None:
    uids, images = table["uid"].to_pylist(), table["image"].to_pylist()
    image = pa.array([None if b is None else {"bytes": b, "path": f"{sample_key(u)}.{sniff(b) or 'bin'}"}
                      for u, b in zip(uids, images)], IMAGE_TYPE)
    arrays = [image, table[text_col].cast(pa.string())] + [table[c] for c in extra if c != "text"]
    rundir.write_parquet_atomic(pa.Table.from_arrays(arrays, schema=schema), path)
