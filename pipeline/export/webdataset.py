"""The kept set as webdataset shards for open_clip: ``{:08d}.tar`` + ``sizes.json``.

Each sample is three adjacent members, always in this order: ``{key}.{jpg|png|webp}`` (the original bytes,
extension by magic bytes), ``{key}.txt`` (the training caption) and ``{key}.json`` (uid, url, the row's
numeric columns, caption provenance). Every header is fixed (mtime 0, uid/gid 0, empty names, mode 0644), so
the same run exports to byte-identical tars (POSIX ustar, written by ``write_tar``). Each tar is written under
a temp name and renamed; ``sizes.json`` is written last, so an export killed half-way is redone by rerunning it
and leaves the same files.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys

from winnow.pipeline import rundir
from winnow.pipeline.export.source import KeptSet, sample_key, sniff
from winnow.pipeline.export.spec import ExportSpec
from winnow.stages import storage

SHARD_NAME = re.compile(r"\d{8}\.tar")
TEMP_NAME = re.compile(r"\d{8}\.tar\.tmp-\d+")


def export_webdataset(run_dir: str, spec: ExportSpec, seed: int) -> dict:
    kept = KeptSet(run_dir)
    folder = rundir.export_dir(run_dir, spec.output, spec.format)
    rundir.ensure_writable_dir(folder)
    _remove(folder, TEMP_NAME)  # what a killed export left
    if storage.exists(rundir.wds_sizes_path(folder)):  # the completion marker goes first, comes back last
        storage.remove(rundir.wds_sizes_path(folder))
    skipped: list[str] = []
    samples = _samples(kept, spec, seed, skipped)
    sizes, index = {}, 0
    while True:
        chunk = itertools.islice(samples, spec.samples_per_shard)
        first = next(chunk, None)
        if first is None:
            break
        path = rundir.wds_shard_path(folder, index)
        count = [0]
        rundir.atomic_write(path, lambda tmp: count.__setitem__(0, write_tar(tmp, itertools.chain([first], chunk))))
        sizes[os.path.basename(path)] = count[0]
        index += 1
    _remove(folder, SHARD_NAME, keep=set(sizes))  # a shorter export than the last one into this folder
    rundir.write_json_atomic(sizes, rundir.wds_sizes_path(folder))
    if skipped:
        print(f"winnow: export webdataset: {len(skipped)} kept row(s) without a JPEG/PNG/WebP image left out "
              f"(e.g. uid {skipped[0]})", file=sys.stderr)
    return {"format": spec.format, "output": folder, "samples": sum(sizes.values()), "shards": len(sizes),
            "skipped": len(skipped)}


def write_tar(path: str, samples) -> int:
    """Write ``(key, ext, image, text, meta)`` samples to a POSIX ustar file at ``path``; returns how many.

    Headers are built here rather than by ``tarfile``: every field but name, size and checksum is fixed, and
    tarfile's general header code was most of the export's time (bench/export_webdataset.py)."""
    n = 0
    with open(path, "wb") as f:
        for key, ext, image, text, meta in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.txt", text), (f"{key}.json", meta)):
                f.write(header(name, len(data)))
                f.write(data)
                if len(data) % BLOCK:
                    f.write(bytes(BLOCK - len(data) % BLOCK))
            n += 1
        f.write(bytes(2 * BLOCK))  # end of archive, then padding to a whole record as tar(1) and tarfile do
        f.write(bytes(-f.tell() % RECORD))
    return n


BLOCK, RECORD = 512, 20 * 512
# ustar header after the name (offset 100): mode 0644, uid 0, gid 0, size, mtime 0, checksum, type '0' (file),
# no link, magic "ustar\0" version "00", uname/gname "", devmajor/minor 0, no prefix.
_MODE_IDS = b"0000644\0" + b"0000000\0" * 2
_AFTER_SUM = b"0" + bytes(100) + b"ustar\x0000" + bytes(64) + b"0000000\0" * 2 + bytes(167)


def header(name: str, size: int) -> bytes:
    """One 512-byte ustar header; names are at most 100 ASCII bytes (source.SAFE_KEY keeps keys short)."""
    raw = name.encode("ascii")
    if len(raw) > 100 or size >= 8 ** 11:
        raise ValueError(f"tar member {name!r} ({size} bytes) does not fit a ustar header")
    head = raw.ljust(100, b"\0") + _MODE_IDS + b"%011o\0" % size + b"00000000000\0"
    checksum = sum(head) + sum(_AFTER_SUM) + 8 * 32  # the checksum field counts as eight spaces
    return head + b"%06o\0 " % checksum + _AFTER_SUM


def _samples(kept: KeptSet, spec: ExportSpec, seed: int, skipped: list[str]):
    """Samples in export order; rows whose image is missing or not JPEG/PNG/WebP go to ``skipped``."""
    text_col = kept.text_column
    meta_cols = [c for c in kept.numeric if c != "uid"] + kept.provenance
    extra = ["url"] if "url" in kept.schema.names else []
    columns = list(dict.fromkeys(["uid", "image", text_col, *extra, *meta_cols]))
    block = spec.samples_per_shard if spec.shuffle else 4096  # shuffled: one block per tar (parts read per block)
    for table in kept.tables(columns, block, spec.shuffle, seed):
        cols = {c: table[c].to_pylist() for c in columns}
        for i, uid in enumerate(cols["uid"]):
            image = cols["image"][i]
            ext = sniff(image)
            if ext is None:
                skipped.append(uid)
                continue
            meta = {"uid": uid}
            meta |= {c: cols[c][i] for c in extra}
            meta |= {c: _finite(cols[c][i]) for c in meta_cols}
            text = cols[text_col][i] or ""
            yield sample_key(uid), ext, image, text.encode("utf-8"), json.dumps(meta, ensure_ascii=False).encode()


def _finite(value):
    """NaN and infinities are not JSON; a missing score is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _remove(folder: str, pattern: re.Pattern, keep: set[str] = frozenset()) -> None:
    for name in storage.listdir(folder):
        if pattern.fullmatch(name) and name not in keep:
            storage.remove(storage.join(folder, name))
