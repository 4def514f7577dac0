"""What produced a checkpoint: fingerprints of the input shards and of the pipeline up to each segment.

Every checkpoint piece (a segment's part of a shard, a barrier's artifact, a group barrier's result)
records the fingerprint of what produced it, and a rerun reuses a piece only when that fingerprint
equals the one computed now. A shard's fingerprint is its path, size and a hash of its Parquet footer
(row groups, statistics, schema: any rewrite changes it) or, for text formats, of its whole content.
A tar is sampled, not read whole (``SAMPLE`` bytes at its start and end, its mtime, its sidecar Parquet's
footer): DataComp's tars are ~0.5 GB each and a full hash of thousands would cost minutes at every start
and resume; a rewrite by img2dataset changes the sidecar's footer and the tar's mtime, and anything that
touches a tar without changing it only costs a recompute, never a wrong reuse. img2dataset's ``files``
folders: the Parquet's footer plus the folder's listing (names, sizes, mtimes).
A segment's fingerprint covers the input column mapping, winnow's version and every stage that has
run by the end of the segment (class, instance name, seed, resolved parameters, a hash of the stage's source file, and
the size and modification time of any local file a parameter names: model checkpoints, metadata
lists, eval sets).
Segment 0 is per shard; a barrier decides over every shard, so from it on a piece also depends on the
whole input listing. Every piece's fingerprint also carries ``CHECKPOINT_LAYOUT``, what a part holds.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import struct
import sys
from dataclasses import dataclass

from winnow.stages import storage

CHUNK = 1 << 20
SAMPLE = 1 << 20
# What a checkpoint part holds, in every piece's fingerprint: 2 = no input image bytes (pipeline/rowrefs.py);
# pieces of the layout before (bytes inside, no version) are redone, never mixed with these.
CHECKPOINT_LAYOUT = 2


def _digest(obj) -> str:
    data = json.dumps(obj, sort_keys=True, default=str).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def shard_key(path: str, fmt: str) -> str:
    """32 hex digits naming one input file's identity: path, size, footer (Parquet) or content hash."""
    size = storage.getsize(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([storage.abspath(path), size]).encode("utf-8", "surrogatepass"))
    if fmt == "webdataset":
        return _tar_key(path, size, h)
    if fmt == "files":
        folder = os.path.splitext(path)[0]
        listing = [(name, *storage.stat(storage.join(folder, name))) for name in storage.listdir(folder)]
        h.update(json.dumps(listing).encode("utf-8", "surrogatepass"))
        fmt = "parquet"
    with storage.open_input(path) as f:
        footer = _parquet_footer(f, size) if fmt == "parquet" else None
        if footer is not None:
            h.update(footer)
        else:  # text formats (small URL lists), or a file that is not valid Parquet: its whole content
            f.seek(0)
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _tar_key(path: str, size: int, h) -> str:
    h.update(str(storage.stat(path)[1]).encode())
    with storage.open_input(path) as f:
        h.update(f.read(SAMPLE))
        if size > SAMPLE:
            f.seek(max(SAMPLE, size - SAMPLE))
            h.update(f.read(SAMPLE))
    side = os.path.splitext(path)[0] + ".parquet"
    if storage.isfile(side):
        side_size = storage.getsize(side)
        h.update(json.dumps(["sidecar", side_size]).encode())
        with storage.open_input(side) as f:
            h.update(_parquet_footer(f, side_size) or f.read())
    return h.hexdigest()


def _parquet_footer(f, size: int) -> bytes | None:
    if size < 12:
        return None
    f.seek(size - 8)
    tail = f.read(8)
    length = struct.unpack("<I", tail[:4])[0]
    if tail[4:] != b"PAR1" or length + 12 > size:
        return None
    f.seek(size - 8 - length)
    return f.read(length)


def winnow_version() -> str:
    try:
        return importlib.metadata.version("winnow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def stage_identity(stage) -> dict:
    """What makes a stage produce what it produces (JSON-able; also shown when a rerun is refused)."""
    return {"stage": f"{type(stage).__module__}.{type(stage).__qualname__}", "name": stage.instance_name,
            "seed": stage.seed, "config": stage.config, "files": _named_files(stage.config),
            "code": _module_hash(type(stage).__module__)}


def _module_hash(module: str) -> str | None:
    """A hash of the stage's own source file: editing a stage's code invalidates its checkpoints."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=8).hexdigest()


def _named_files(value, found: dict | None = None) -> dict:
    """size and mtime of local files a parameter names (a plain path, or a model spec's ``...@PATH``), and of
    the files in a saved Hugging Face model directory it names (one holding config.json: new weights saved
    under the same path must not resume from checkpoints scored with the old ones)."""
    found = {} if found is None else found
    if isinstance(value, dict):
        for v in value.values():
            _named_files(v, found)
    elif isinstance(value, list):
        for v in value:
            _named_files(v, found)
    elif isinstance(value, str) and value:
        for candidate in (value, value.rpartition("@")[2]):
            if candidate and os.path.isfile(candidate):
                st = os.stat(candidate)
                found[os.path.abspath(candidate)] = [st.st_size, st.st_mtime_ns]
            elif candidate and os.path.isfile(os.path.join(candidate, "config.json")):
                for name in sorted(os.listdir(candidate)):
                    path = os.path.join(candidate, name)
                    if os.path.isfile(path):
                        st = os.stat(path)
                        found[os.path.abspath(path)] = [st.st_size, st.st_mtime_ns]
    return found


@dataclass(frozen=True)
class RunFingerprints:
    """The fingerprints a run checks its checkpoints against."""

    pipeline: str  # the whole pipeline: a different one in the same output is refused unless told
    segments: tuple[str, ...]  # per segment, for pieces that depend on every shard (barriers, later parts)
    first: dict[int, str]  # per shard index: that shard's segment-0 part

    def part(self, k: int, shard_index: int) -> str:
        return self.first[shard_index] if k == 0 else self.segments[k]

    def barrier(self, k: int) -> str:
        return self.segments[k]


def for_run(segments, shards, columns: dict) -> RunFingerprints:
    """Fingerprints of a plan (``plan.make_plan``'s segments) over these input shards."""
    version = winnow_version()
    identities: dict[str, dict] = {}
    prefix = []
    for seg in segments:
        for step in seg.steps:
            identities.setdefault(step.stage.instance_name, stage_identity(step.stage))
        if seg.barrier is not None:
            identities.setdefault(seg.barrier.instance_name, stage_identity(seg.barrier))
        prefix.append(_digest({"winnow": version, "columns": columns, "stages": list(identities.values())}))
    listing = _digest(sorted(s.key for s in shards))
    return RunFingerprints(
        pipeline=prefix[-1] if prefix else _digest({"winnow": version, "columns": columns}),
        segments=tuple(_digest([p, listing, CHECKPOINT_LAYOUT]) for p in prefix),
        first={s.index: _digest([prefix[0], s.key, CHECKPOINT_LAYOUT]) for s in shards} if prefix else {},
    )


def describe(segments, columns: dict) -> dict:
    """The readable record saved with a run, compared field by field when a rerun is refused."""
    stages = {}
    for seg in segments:
        for stage in [step.stage for step in seg.steps] + ([seg.barrier] if seg.barrier is not None else []):
            stages.setdefault(stage.instance_name, stage_identity(stage))
    return {"columns": columns, "stages": list(stages.values())}


def first_difference(old: dict, new: dict) -> str:
    """One phrase naming what changed between two ``describe`` records."""
    if old.get("columns") != new.get("columns"):
        return f"columns: {json.dumps(old.get('columns'))} -> {json.dumps(new.get('columns'))}"
    old_stages, new_stages = old.get("stages", []), new.get("stages", [])
    old_names, new_names = [s["name"] for s in old_stages], [s["name"] for s in new_stages]
    if old_names != new_names:
        return f"stages: {', '.join(old_names) or 'none'} -> {', '.join(new_names) or 'none'}"
    for a, b in zip(old_stages, new_stages):
        for key in sorted(set(a["config"]) | set(b["config"])):
            if a["config"].get(key) != b["config"].get(key):
                return (f"stage '{b['name']}' parameter '{key}': {json.dumps(a['config'].get(key))} -> "
                        f"{json.dumps(b['config'].get(key))}")
        for key in ("stage", "seed", "files", "code"):
            if a.get(key) != b.get(key):
                return f"stage '{b['name']}' {key} changed"
    return "winnow version or stage code changed"
