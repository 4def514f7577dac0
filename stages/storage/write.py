"""Writing files and objects whole or not at all (``atomic_write``: rename on disk, one upload on a store),
removing them, and probing that an output can be written."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from winnow.stages.storage.errors import _diagnosed, _failure, _on_store, reason
from winnow.stages.storage.paths import _local, is_remote, join, resolve


def makedirs(path: str) -> None:
    """Local folders are made; a store has none (a prefix exists once an object is under it)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes a local file; then it becomes ``path`` in one step: a rename on local disk,
    one upload on a store (the object appears whole when the upload completes, or not at all). A failure
    is one line naming ``path``, and nothing half-written is left under the final name."""
    if not is_remote(path):
        local = _local(path)
        tmp = f"{local}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
            write(tmp)
            os.replace(tmp, local)
        except OSError as exc:
            raise _failure(f"output {path}: cannot write ({reason(exc)})", reason(exc)) from None
        finally:  # whatever stopped write() (an error of its own, Ctrl-C), no temp file stays behind
            _discard(tmp)
        return
    fd, tmp = tempfile.mkstemp(prefix="winnow-upload-")
    os.close(fd)
    try:
        write(tmp)
        fs, p = resolve(path)
        pafs.copy_files(tmp, p, source_filesystem=resolve(tmp)[0], destination_filesystem=fs)
    except OSError as exc:
        why = _diagnosed(path, exc)
        raise _failure(f"output {path}: cannot write ({why})", why) from None
    finally:
        _discard(tmp)


def _discard(tmp: str) -> None:
    try:
        os.remove(tmp)
    except OSError:
        pass


def write_bytes(data: bytes, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_json(obj, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)

    atomic_write(path, write)


def write_parquet(table: pa.Table, path: str) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def remove(path: str) -> None:
    """Remove a file or object; gone already is fine."""
    if not is_remote(path):
        try:
            os.remove(_local(path))
        except FileNotFoundError:
            pass
        return
    fs, p = resolve(path)
    try:
        with _on_store(path, "remove"):
            fs.delete_file(p)
    except FileNotFoundError:
        pass


def rmtree(path: str) -> None:
    """Remove a folder (a prefix on a store) and everything under it; absent is fine."""
    if not is_remote(path):
        if os.path.isdir(_local(path)):
            shutil.rmtree(_local(path))
        return
    fs, p = resolve(path)
    with _on_store(path, "remove"):
        if fs.get_file_info(p).type != pafs.FileType.Directory:
            return
        if "/" in p.strip("/"):
            fs.delete_dir(p)
        else:  # a bucket's root: empty it, never delete the bucket itself
            fs.delete_dir_contents(p, missing_dir_ok=True)


def ensure_writable(path: str) -> None:
    """Fail early, in one line naming the output, when it cannot be written (a probe object or file)."""
    probe = join(path, f".write-test-{os.getpid()}")
    try:
        if not is_remote(path):
            os.makedirs(_local(path), exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=_local(path), prefix=".write-test-", delete=True):
                pass
            return
        fs, p = resolve(probe)
        with fs.open_output_stream(p) as f:
            f.write(b"")
        fs.delete_file(p)
    except OSError as exc:
        why = _diagnosed(path, exc) if is_remote(path) else reason(exc)
        raise _failure(f"output {path}: not writable ({why})", why) from None
