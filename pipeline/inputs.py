"""Reading input shards in the layouts people actually have, into winnow's canonical columns.

Recognised without flags: LAION/img2dataset inputs (``URL``/``TEXT``), ``url``/``caption``,
Conceptual Captions TSV (``caption<TAB>url``, no header), img2dataset output in each of its formats
(``parquet``; ``webdataset`` tars and DataComp ``shards/``; ``files``: see pipeline/readers/ and docs/inputs.md),
and the metadata Parquet of LAION (``WIDTH``/``HEIGHT``), DataComp (``original_width``/``original_height``,
``text``) and COYO (``width``/``height``): their sizes feed the canonical ``width``/``height``. ``columns``
(canonical -> source name) overrides the guess; ``column_sources`` says which source fed each canonical column.
Unknown extra columns are carried through untouched.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

from winnow.pipeline.fingerprint import shard_key
from winnow.pipeline.readers.img2dataset import download_outcomes, read_files
from winnow.pipeline.readers.layout import list_paths, sidecar
from winnow.pipeline.readers.webdataset import read_webdataset
from winnow.stages import storage
from winnow.stages.columns import REJECT_REASON, REJECT_STAGE
from winnow.stages.errors import WinnowError

# canonical column -> source names we recognise, in order of preference
ALIASES = {
    "uid": ["uid"],
    "url": ["url", "URL", "image_url", "img_url"],
    "caption": ["caption", "TEXT", "text", "alt_text", "alt"],
    "image": ["image", "jpg", "png", "webp", "image_bytes"],
    # The original size first: DataComp's basic filter judges the size before img2dataset resized it, and
    # img2dataset output has both (``width`` is then the resized size, kept as ``resized_width``).
    "width": ["original_width", "WIDTH", "width"],
    "height": ["original_height", "HEIGHT", "height"],
}
# A canonical-named column displaced by a preferred source keeps its values under this name.
DISPLACED = {"width": "resized_width", "height": "resized_height"}


# Input columns that would be taken for winnow's own: renamed aside (``input_<name>``) with a warning.
RUNNER_PREFIX = "__winnow_"
_WARNED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Shard:
    """One input file. ``name`` is its path relative to the input root (derived uids start from it);
    ``key`` fingerprints its identity (path, size, footer or content), so output names follow the file,
    not its position in the listing: adding a shard never shifts another shard's checkpoints."""

    path: str
    index: int
    format: str
    key: str = ""
    name: str = ""

    @property
    def stem(self) -> str:
        """Output file names of this shard: readable (from its name) and unique (from its key)."""
        if not self.key:
            return f"{self.index:05d}"
        base = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.splitext(os.path.basename(self.path))[0])[:40]
        return f"{base}-{self.key[:10]}"


def list_shards(spec: str) -> list[Shard]:
    """Expand a file, directory, glob or brace pattern into shards, sorted for determinism, each fingerprinted."""
    root, paths = list_paths(spec)
    shards = []
    for i, (p, fmt) in enumerate(paths):
        try:
            key = shard_key(p, fmt)
        except OSError as exc:
            raise storage.error(p, "input", exc) from None
        shards.append(Shard(p, i, fmt, key, storage.relpath(p, root)))
    return shards


def read_shard(shard: Shard, columns: dict[str, str] | None = None) -> pa.Table:
    """Read one shard and map it to canonical columns; assigns uids when the input has none.

    Rows img2dataset failed to download, and rows a damaged tar sample cannot give, come already rejected
    (``reject_stage`` 'download' / 'input'): they are in the manifest once, and no stage works on them."""
    try:
        raw, input_reasons = _read_raw(shard)
    except WinnowError:
        raise
    except Exception as exc:  # pyarrow/csv/json errors carry no file name: add it
        raise WinnowError(f"input {shard.path}: cannot be read as {shard.format} ({_first_line(exc)})") from None
    outcomes = download_outcomes(raw)
    if outcomes is not None and "uid" not in raw.column_names:
        raw = raw.append_column("uid", raw["key"].cast(pa.string()))  # img2dataset's key names its rows
    table = with_uids(canonicalize(raw, columns or {}, shard.path), shard)
    return _rejected_on_read(table, outcomes, input_reasons)


def source_names(shard: Shard) -> list[str]:
    """The shard's own column names, before canonicalize (Parquet: from its footer)."""
    if shard.format == "parquet":
        return storage.read_schema(shard.path).names
    return _read_raw(shard)[0].column_names


def with_uids(table: pa.Table, shard: Shard) -> pa.Table:
    """Check the input's uids, or derive them when it has none."""
    if "uid" in table.column_names:
        check_uids(table["uid"], shard.path)
    else:
        table = table.append_column("uid", assign_uids(shard.name or os.path.basename(shard.path), table.num_rows))
    return table


def _rejected_on_read(table: pa.Table, outcomes, input_reasons: list[str | None] | None) -> pa.Table:
    """img2dataset's failures first (the row never had an image), then the reader's own per-row problems."""
    if outcomes is None and input_reasons is None:
        return table
    n = table.num_rows  # from here every shard of the format gets the same columns, rejected rows or not
    download = outcomes[0] if outcomes else [None] * n
    read = input_reasons or [None] * n
    stages = ["download" if d else ("input" if r else None) for d, r in zip(download, read)]
    reasons = [d or r for d, r in zip(download, read)]
    table = table.append_column(REJECT_STAGE, pa.array(stages, pa.string()))
    table = table.append_column(REJECT_REASON, pa.array(reasons, pa.string()))
    if outcomes is not None and "download_error" not in table.column_names:
        table = table.append_column("download_error", pa.array(outcomes[1], pa.string()))
    return table


def count_rows(shard: Shard, columns: dict[str, str] | None = None) -> int:
    """Rows of an input shard as it is now (Parquet, and tars or folders with img2dataset's Parquet: from
    its footer, which lists every row), for the conservation check."""
    if shard.format == "parquet" or shard.format == "files":
        return storage.read_metadata(shard.path).num_rows
    if shard.format == "webdataset" and storage.isfile(sidecar(shard.path)):
        return storage.read_metadata(sidecar(shard.path)).num_rows
    return read_shard(shard, columns).num_rows


def _read_raw(shard: Shard) -> tuple[pa.Table, list[str | None] | None]:
    if shard.format == "parquet":
        return storage.read_parquet(shard.path), None
    if shard.format == "webdataset":
        return read_webdataset(shard.path)
    if shard.format == "files":
        return read_files(shard.path)
    if shard.format == "jsonl":
        rows = [json.loads(line) for line in storage.read_text(shard.path).splitlines() if line.strip()]
        return (pa.Table.from_pylist(rows) if rows else pa.table({})), None
    return _read_delimited(shard.path, "\t" if shard.format == "tsv" else ","), None


def _read_delimited(path: str, delimiter: str) -> pa.Table:
    with storage.open_input(path, seekable=False) as f:
        first = f.read(1 << 16).split(b"\n", 1)[0].decode("utf-8", errors="replace")
    header = next(csv.reader(io.StringIO(first), delimiter=delimiter), [])
    known = {a for names in ALIASES.values() for a in names}
    has_header = any(h.strip() in known for h in header)
    read = pacsv.ReadOptions(column_names=None if has_header else _headerless_names(header))
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"',
                               newlines_in_values=delimiter != "\t")
    # Everything as strings: a caption like "1984" must not become an integer.
    names = header if has_header else read.column_names
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)
    with storage.open_input(path, seekable=False) as f:
        return pacsv.read_csv(f, read_options=read, parse_options=parse, convert_options=convert)


def _headerless_names(first_row: list[str]) -> list[str]:
    """No header: Conceptual Captions is ``caption<TAB>url``; otherwise guess which field is the URL."""
    if len(first_row) == 2 and _looks_like_url(first_row[1]):
        return ["caption", "url"]
    if len(first_row) == 2 and _looks_like_url(first_row[0]):
        return ["url", "caption"]
    if len(first_row) == 1 and _looks_like_url(first_row[0]):
        return ["url"]
    return [f"column_{i}" for i in range(len(first_row))]


def _looks_like_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://", "ftp://", "file://", "data:"))


def column_sources(names: list[str], columns: dict[str, str], source: str) -> dict[str, str]:
    """canonical column -> the source column that feeds it (explicit ``columns`` first, then ALIASES)."""
    chosen: dict[str, str] = {}
    for canon, src in columns.items():
        if canon not in ALIASES:
            raise WinnowError(f"column mapping: unknown canonical column '{canon}'; valid: {', '.join(ALIASES)}")
        if src not in names:
            raise WinnowError(f"input {source}: mapped column '{src}' (for '{canon}') not found; "
                              f"columns are: {', '.join(names)}")
        chosen[canon] = src
    for canon, aliases in ALIASES.items():
        if canon not in chosen:
            taken = set(chosen.values())
            found = next((a for a in aliases if a in names and a not in taken), None)
            if found is not None:
                chosen[canon] = found
    return chosen


def canonicalize(table: pa.Table, columns: dict[str, str], source: str) -> pa.Table:
    """Rename recognised source columns to canonical names and give them canonical types."""
    sources = column_sources(table.column_names, columns, source)
    renames = {src: canon for canon, src in sources.items()}
    out = {}
    for name in table.column_names:
        target = renames.get(name, name)
        if target in (REJECT_STAGE, REJECT_REASON) or target.startswith(RUNNER_PREFIX):
            target = _set_aside(name, source)
        elif name not in renames and name in sources:  # a canonical name fed by another column
            target = DISPLACED.get(name, f"{name}_original")
        if target in out:  # keep the mapped one; a clashing original keeps its own name
            target = f"{name}_original"
        out[target] = table[name]
    table = pa.table(out)
    wanted = {"uid": pa.string(), "url": pa.string(), "caption": pa.string(), "image": pa.binary(),
              "width": pa.int32(), "height": pa.int32()}
    for name, typ in wanted.items():
        if name in table.column_names and table.schema.field(name).type != typ:
            try:
                table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(typ))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise WinnowError(f"input {source}: column '{name}' has type {table.schema.field(name).type}, "
                                  f"expected {typ}") from None
    if "url" not in table.column_names and "image" not in table.column_names:
        raise WinnowError(f"input {source}: no URL or image column found (columns: {', '.join(table.column_names)}); "
                          "name them with --columns url=COL,caption=COL")
    return table


def _set_aside(name: str, source: str) -> str:
    """An input column named like winnow's decision or bookkeeping columns keeps its values under
    ``input_<name>``: the run's decisions start from nothing, and the runner's names stay its own."""
    target = f"input_{name.lstrip('_')}"
    if (source, name) not in _WARNED:
        _WARNED.add((source, name))
        print(f"winnow: warning: input {source}: column '{name}' is winnow's own name; read as '{target}'",
              file=sys.stderr)
    return target


def check_uids(uids: pa.ChunkedArray | pa.Array, source: str) -> None:
    """Input uids must be present and unique: every stage, resume and export keys rows by them."""
    import pyarrow.compute as pc

    if uids.null_count:
        row = pc.index(pc.is_null(uids), True).as_py()
        raise WinnowError(f"input {source}: column 'uid' is null in {uids.null_count} rows (first: row {row}); "
                          "give every row a uid, or drop the column to have winnow derive them")
    counts = pc.value_counts(uids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        example = repeated[0].as_py()
        raise WinnowError(f"input {source}: {len(repeated)} uids occur more than once "
                          f"(e.g. '{example['values']}', {example['counts']} times); uids must be unique")


def assign_uids(shard_name: str, n: int) -> pa.Array:
    """Derived uids, unique by construction and the same on every run of the same input: a hash of the
    shard's name (its path under the input root) and the row's position, ``<20 hex>-<row>``."""
    prefix = hashlib.blake2b(shard_name.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
    return pa.array([f"{prefix}-{i}" for i in range(n)], pa.string())


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
