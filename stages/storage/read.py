"""Asking about and reading files and objects: existence (a HEAD, never a listing), listings, globs,
bytes, JSON, Parquet and Arrow datasets, on local disk or any store ``paths.resolve`` reaches."""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob as globlib
import json
import os
import posixpath
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from winnow.stages.storage.errors import _listed, _on_store
from winnow.stages.storage.paths import _local, is_remote, resolve


def info(path: str) -> pafs.FileInfo:
    fs, p = resolve(path)
    with _on_store(path, "look up"):
        return fs.get_file_info(p)


def exists(path: str) -> bool:
    """Asked of the object itself (a HEAD on a store), never of a listing."""
    if not is_remote(path):
        return os.path.exists(_local(path))
    return info(path).type != pafs.FileType.NotFound


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(_local(path))
    return info(path).type == pafs.FileType.File


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(_local(path))
    return info(path).type == pafs.FileType.Directory


def getsize(path: str) -> int:
    return stat(path)[0]


def stat(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file or object (a store keeps seconds)."""
    if not is_remote(path):
        st = os.stat(_local(path))
        return st.st_size, st.st_mtime_ns
    i = info(path)
    if i.type == pafs.FileType.NotFound:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    return i.size or 0, i.mtime_ns or 0


def listdir(path: str) -> list[str]:
    """Names directly under ``path`` (files and folders), sorted; [] when it does not exist."""
    if not is_remote(path):
        return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)))
    return sorted(posixpath.basename(e.path.rstrip("/")) for e in entries)


def list_entries(path: str) -> dict[str, bool]:
    """What is directly under a folder, in one listing: full path (as ``path`` spells it) -> is a folder."""
    if not is_remote(path):
        root = _local(path)
        return {os.path.join(root, n): os.path.isdir(os.path.join(root, n)) for n in sorted(os.listdir(root))}
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)))
    return {_spelled(path, p, e.path): e.type == pafs.FileType.Directory for e in sorted(entries, key=lambda e: e.path)}


def list_files(path: str, recursive: bool = False) -> list[str]:
    """Full paths of the files under ``path`` (as ``path`` spells them), sorted."""
    if not is_remote(path):
        root = _local(path)
        if not os.path.isdir(root):
            return []
        if not recursive:
            return sorted(os.path.join(root, n) for n in os.listdir(root) if os.path.isfile(os.path.join(root, n)))
        return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
    fs, p = resolve(path)
    with _on_store(path, "list"):
        entries = _listed(path, fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True)))
    return sorted(_spelled(path, p, e.path) for e in entries if e.type == pafs.FileType.File)


def _spelled(path: str, inner_root: str, inner: str) -> str:
    """An entry listed under ``path`` spelled as the caller spelled ``path`` (whatever the scheme)."""
    return f"{path.rstrip('/')}/{inner[len(inner_root):].lstrip('/')}"


def glob(pattern: str) -> list[str]:
    """Files matching a glob (``*``, ``?``, ``[...]`` within one folder level, ``**`` across levels,
    names starting with ``.`` only when the pattern says so), as Python's glob matches local paths;
    on a store, the prefix before the first wildcard is listed and matched level by level."""
    if not is_remote(pattern):
        return sorted(p for p in globlib.glob(_local(pattern), recursive=True) if os.path.isfile(p))
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    base = head.rsplit("/", 1)[0]
    levels = pattern[len(base) + 1:].split("/")
    deep = len(levels) > 1 or "**" in levels
    return [p for p in list_files(base, recursive=deep) if _matches(p[len(base) + 1:].split("/"), levels)]


def _matches(names: list[str], levels: list[str]) -> bool:
    """Path segments against pattern segments, as glob(recursive=True) does: ``**`` is any number of
    levels, a wildcard never matches a leading dot."""
    if not levels:
        return not names
    if levels[0] == "**":
        return any(_matches(names[i:], levels[1:]) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    return bool(names) and (names[0][:1] != "." or levels[0][:1] == ".") \
        and fnmatch.fnmatchcase(names[0], levels[0]) and _matches(names[1:], levels[1:])


# -- reading ----------------------------------------------------------------------------------------
def open_input(path: str, seekable: bool = True):
    """A binary file object for reading (random access for Parquet footers, streaming for tars)."""
    if not is_remote(path):
        return open(_local(path), "rb")
    fs, p = resolve(path)
    with _on_store(path, "read"):
        return fs.open_input_file(p) if seekable else fs.open_input_stream(p)


def read_bytes(path: str) -> bytes:
    with _on_store(path, "read") if is_remote(path) else contextlib.nullcontext():
        with open_input(path, seekable=False) as f:
            return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    return json.loads(read_bytes(path))


def read_parquet(path: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    if not is_remote(path):
        return pq.read_table(_local(path), columns=columns, filters=filters)
    fs, p = resolve(path)
    with _on_store(path, "read"):
        return pq.read_table(p, columns=columns, filters=filters, filesystem=fs)


def dataset(path: str):
    """A ``pyarrow.dataset`` of Parquet at a file, folder or glob, on any filesystem this module reaches."""
    import pyarrow.dataset as ds

    if any(ch in path for ch in "*?["):
        files = glob(path)
        if not files:
            raise FileNotFoundError(errno.ENOENT, "no Parquet files match", path)
        fs = resolve(files[0])[0]
        with _on_store(path, "read"):
            return ds.dataset([resolve(f)[1] for f in files], filesystem=fs, format="parquet")
    fs, p = resolve(path)
    with _on_store(path, "read") if is_remote(path) else contextlib.nullcontext():
        return ds.dataset(p, filesystem=fs, format="parquet")


def parquet_file(path: str) -> pq.ParquetFile:
    if not is_remote(path):
        return pq.ParquetFile(_local(path))
    with _on_store(path, "read"):
        return pq.ParquetFile(open_input(path))


def read_schema(path: str) -> pa.Schema:
    return parquet_file(path).schema_arrow


def read_metadata(path: str) -> pq.FileMetaData:
    return parquet_file(path).metadata
