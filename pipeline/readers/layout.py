"""Which files of an input spec are shards, and in which format: plain files, globs, brace patterns,
img2dataset output folders (webdataset / parquet / files) and DataComp ``shards/`` folders.

An img2dataset shard is several files with one stem: ``00000.tar`` (samples) or ``00000/`` (files) or
only ``00000.parquet`` (bytes inside), plus ``00000.parquet`` (every row, failures included) and
``00000_stats.json``. One stem is one shard: the sidecar Parquet and the stats file belong to the tar or
folder beside them and are never read as shards of their own (a ``_stats.json`` is not JSONL).
"""
from __future__ import annotations

import os
import re

import pyarrow as pa

from winnow.stages import storage
from winnow.stages.errors import WinnowError

EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
              ".tar": "webdataset"}
STATS_SUFFIX = "_stats.json"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(spec: str) -> list[str]:
    """``a/{00000..00127}.tar`` and ``{a,b}`` as open_clip and webdataset write them (braceexpand's rules:
    a bound written with a leading zero pads every number to the wider bound), expanded left to right."""
    m = _BRACE.search(spec)
    if not m:
        return [spec]
    body, head, tail = m.group(1), spec[:m.start()], spec[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        lo, hi, step = int(a), int(b), int(rng.group(3) or 1) or 1
        padded = any(s.startswith(("0", "-0")) for s in (a, b) if s not in ("0", "-0"))
        width = max(len(a), len(b)) if padded else 0
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        parts = [f"{v:0{width}d}" for v in values]
    else:
        parts = body.split(",")
    return [p for part in parts for p in expand_braces(head + part + tail)]


def format_of(path: str) -> str | None:
    if path.endswith(STATS_SUFFIX):
        return None  # img2dataset's per-shard stats, never an input
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def stem_of(path: str) -> str:
    return os.path.splitext(path)[0]


def sidecar(path: str) -> str:
    """The Parquet img2dataset writes beside a tar or a files-format folder (every row of the shard)."""
    return stem_of(path) + ".parquet"


def shard_of(path: str, listing: dict[str, bool] | None = None) -> tuple[str, str] | None:
    """(shard path, format) a file stands for: a sidecar Parquet stands for its tar or its files folder.
    ``listing`` (path -> is a folder) answers from one listing of the folder instead of a request per file,
    which on a store is a round trip each."""
    def isfile(p: str) -> bool:
        return listing.get(p) is False if listing is not None else storage.isfile(p)

    def isdir(p: str) -> bool:
        return bool(listing.get(p)) if listing is not None else storage.isdir(p)

    fmt = format_of(path)
    if fmt == "parquet":
        if isfile(stem_of(path) + ".tar"):
            return stem_of(path) + ".tar", "webdataset"
        if isdir(stem_of(path)) and isfile(stem_of(path) + STATS_SUFFIX):  # img2dataset's "files"
            return path, "files"
    return (path, fmt) if fmt else None


def list_paths(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """(root, sorted unique (path, format)) for a file, directory, glob or brace pattern."""
    try:
        return _list_paths(spec)
    except OSError as exc:  # a store's error (no bucket, no credentials, ...): one line naming the input
        raise storage.error(spec, "input", exc) from None


def _list_paths(spec: str) -> tuple[str, list[tuple[str, str]]]:
    kind = None if _BRACE.search(spec) or any(ch in spec for ch in "*?[") else storage.info(spec).type.name
    if kind == "Directory":
        root = spec
        listing = storage.list_entries(spec)
        found = [shard_of(p, listing) for p, is_dir in listing.items() if not is_dir]
    elif _BRACE.search(spec):
        root, found = _braced(spec)
    elif kind is None:
        root = os.path.dirname(re.split(r"[*?\[]", spec, maxsplit=1)[0]) or "."
        found = [shard_of(p) for p in storage.glob(spec)]
    elif kind == "File":
        if not format_of(spec):
            raise WinnowError(f"input {spec}: unsupported file type; use .parquet, .csv, .tsv, .jsonl or .tar")
        root, found = os.path.dirname(spec) or ".", [shard_of(spec)]
    elif storage.is_remote(spec) and not storage.exists(spec.split("://", 1)[0] + "://" + _bucket(spec)):
        raise WinnowError(f"input {spec}: no such bucket '{_bucket(spec)}'")
    else:
        raise WinnowError(f"input {spec}: no such file or directory" if not storage.is_remote(spec) else
                          f"input {spec}: no object or prefix of that name")
    paths = sorted({f for f in found if f})
    if not paths:
        hint = ("; a DataComp pool keeps its tars in shards/: use --input " + storage.join(spec, "shards")
                if storage.isdir(storage.join(spec, "shards")) else "")
        raise WinnowError(f"input {spec}: no .parquet, .csv, .tsv, .jsonl or .tar files found{hint}")
    for path, fmt in paths:
        if fmt == "webdataset":
            check_tar_has_sidecar(path)
    return root, paths


def _bucket(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _braced(spec: str) -> tuple[str, list]:
    """A brace pattern names exact files, as a trainer reads them: each one must exist."""
    names = expand_braces(spec)
    root = os.path.dirname(spec[:_BRACE.search(spec).start()]) or "."
    missing = [p for p in names if not storage.isfile(p)]
    if len(missing) == len(names):
        raise WinnowError(f"input {spec}: the pattern names {len(names)} files and none exists (first: {names[0]})")
    if missing:
        raise WinnowError(f"input {spec}: {len(missing)} of the {len(names)} files it names do not exist "
                          f"(first: {missing[0]})")
    bad = [p for p in names if not format_of(p)]
    if bad:
        raise WinnowError(f"input {bad[0]}: unsupported file type; use .parquet, .csv, .tsv, .jsonl or .tar")
    return root, [shard_of(p) for p in names]


def check_tar_has_sidecar(path: str) -> None:
    """In an img2dataset/DataComp folder every tar has its Parquet: without it the rows img2dataset failed
    to download would vanish from the manifest. A lone tar (open_clip, Ray Data) needs none."""
    if storage.isfile(sidecar(path)):
        return
    folder = os.path.dirname(path) or "."
    if storage.isfile(stem_of(path) + STATS_SUFFIX) or any(f.endswith(STATS_SUFFIX) for f in storage.listdir(folder)):
        raise WinnowError(f"input {path}: no {os.path.basename(sidecar(path))} beside it, in an img2dataset output "
                          "folder (its failed rows are listed only there); the shard is incomplete: rerun "
                          "img2dataset on it or move the tar out")


def read_listing(path: str, of: str) -> pa.Table:
    """img2dataset's Parquet list of a shard's rows (every row, failures included, keyed by ``key``)."""
    try:
        meta = storage.read_parquet(path)
    except Exception as exc:
        raise WinnowError(f"input {path}: cannot be read as parquet ({str(exc).splitlines()[0]})") from None
    if "key" not in meta.column_names:
        raise WinnowError(f"input {path}: no 'key' column, so it is not img2dataset's list of {of}")
    return meta
