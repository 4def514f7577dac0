"""A webdataset tar shard (img2dataset, DataComp, open_clip) read member by member into rows.

Samples are groups of adjacent members sharing a key (the member name up to the first dot of its file
name, as webdataset splits it): ``{key}.jpg|png|webp|...`` the image bytes, ``{key}.txt`` the caption,
``{key}.json`` the metadata. The tar is streamed (``tarfile`` mode ``r|``): each member is read once, in
order, and only the members winnow keeps are held. With the sidecar Parquet img2dataset writes, the rows
are the Parquet's (every URL, failures included) and the tar supplies their bytes; a lone tar's rows are
its samples.

Structural ambiguity is the user's to fix, one line naming file and member: a key repeated, members of a
sample apart, a tar sample the Parquet does not list (each trainer would read those differently). Damage
to one sample is that row's rejection (``reject_stage='input'``): ``bad_sample_json``, ``no_image_in_tar``,
``missing_from_tar``, and ``tar_truncated`` for the sample cut off and every row after it, so one damaged
shard of thousands costs its lost rows, not the run.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa

from winnow.pipeline.readers.layout import read_listing, sidecar
from winnow.stages import storage
from winnow.stages.errors import WinnowError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "jxl", "avif", "heic")
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


@dataclass
class TarSamples:
    """What a tar holds: per key its members (extension -> bytes), in tar order, and where it was cut off."""

    samples: dict[str, dict[str, bytes]] = field(default_factory=dict)
    truncated_key: str | None = None
    truncated_member: str | None = None


def read_tar(path: str) -> TarSamples:
    out = TarSamples()
    current, member = None, None
    try:
        with storage.open_input(path, seekable=False) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                member = info.name
                if not info.isfile():
                    continue
                m = _MEMBER.match(info.name)
                if not m:
                    continue  # no extension: webdataset skips such members too
                key, ext = m.group(1), m.group(2).lower()
                if key != current:
                    if key in out.samples:
                        raise WinnowError(f"input {path}: member '{info.name}': key '{key}' appears again after other "
                                          "samples (members of a sample must be adjacent and keys unique)")
                    out.samples[key], current = {}, key
                if ext in out.samples[key]:
                    raise WinnowError(f"input {path}: member '{info.name}': two samples share the key '{key}' "
                                      "(keys must be unique in a tar)")
                out.samples[key][ext] = tar.extractfile(info).read()
    except (tarfile.ReadError, EOFError, OSError) as exc:
        if member is None:  # not one member could be read: not a tar at all
            raise WinnowError(f"input {path}: cannot be read as a tar ({exc})") from None
        m = _MEMBER.match(member)
        out.truncated_key = m.group(1) if m else current
        out.truncated_member = member
        out.samples.pop(out.truncated_key, None)
    return out


def read_webdataset(path: str) -> tuple[pa.Table, list[str | None]]:
    """Rows of a tar shard and, per row, the input problem that rejects it (None: none)."""
    tar = read_tar(path)
    side = sidecar(path)
    if storage.isfile(side):
        table, reasons = _with_sidecar(path, side, tar)
    else:
        table, reasons = _alone(tar)
    if tar.truncated_member:
        print(f"winnow: warning: input {path}: the tar ends inside member '{tar.truncated_member}'; "
              f"{reasons.count('tar_truncated')} rows rejected as tar_truncated (copy the file again)",
              file=sys.stderr)
    return table, reasons


def _image(members: dict[str, bytes]) -> tuple[bytes | None, str | None]:
    for ext, data in members.items():
        if ext.rsplit(".", 1)[-1] in IMAGE_EXTS:
            return data, ext.rsplit(".", 1)[-1]
    return None, None


def _meta(members: dict[str, bytes]) -> tuple[dict | None, bool]:
    """(the sample's .json as a dict, whether it is damaged)."""
    if "json" not in members:
        return None, False
    try:
        meta = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError):
        return None, True
    return (meta, False) if isinstance(meta, dict) else (None, True)


def _sample_reason(members: dict[str, bytes] | None, truncated: bool) -> str | None:
    if members is None:
        return "tar_truncated" if truncated else "missing_from_tar"
    if _meta(members)[1]:
        return "bad_sample_json"
    return None if _image(members)[0] is not None else "no_image_in_tar"


def _with_sidecar(path: str, side: str, tar: TarSamples) -> tuple[pa.Table, list[str | None]]:
    meta = read_listing(side, f"{path}'s rows")
    keys = meta["key"].to_pylist()
    listed = set(keys)
    extra = next((k for k in tar.samples if k not in listed), None)
    if extra is not None:
        raise WinnowError(f"input {path}: sample '{extra}' is not in {os.path.basename(side)}; the tar and its "
                          "parquet are not from the same img2dataset run")
    statuses = meta["status"].to_pylist() if "status" in meta.column_names else ["success"] * len(keys)
    images, formats, reasons = [], [], []
    for key, status in zip(keys, statuses):
        members = tar.samples.get(key)
        reason = None
        if status == "success":  # failures are img2dataset's download rejections (inputs.py)
            cut = tar.truncated_key is not None and (key == tar.truncated_key or key not in tar.samples)
            reason = _sample_reason(members, cut)
        image, fmt = _image(members) if members and reason is None else (None, None)
        images.append(image)
        formats.append(fmt)
        reasons.append(reason)
    if "uid" not in meta.column_names:
        meta = meta.append_column("uid", pa.array(keys, pa.string()))
    if "caption" not in meta.column_names:
        meta = meta.append_column("caption", pa.array([_caption(tar.samples.get(k)) for k in keys], pa.string()))
    meta = meta.drop_columns([c for c in ("jpg", "image", "image_format") if c in meta.column_names])
    meta = meta.append_column("image", pa.array(images, pa.binary()))
    return meta.append_column("image_format", pa.array(formats, pa.string())), reasons


def _caption(members: dict[str, bytes] | None) -> str | None:
    if not members or "txt" not in members:
        return None
    return members["txt"].decode("utf-8", errors="replace")


def _alone(tar: TarSamples) -> tuple[pa.Table, list[str | None]]:
    """A tar without img2dataset's Parquet: one row per sample; metadata from its .json."""
    samples = dict(tar.samples)
    if tar.truncated_key is not None:
        samples[tar.truncated_key] = None  # the sample cut off is a row too, rejected
    rows, reasons = [], []
    for key, members in samples.items():
        reason = _sample_reason(members, truncated=members is None)
        meta = (_meta(members)[0] if members else None) or {}
        image, fmt = _image(members) if members and reason is None else (None, None)
        row = {k: v for k, v in meta.items() if not isinstance(v, (dict, list))}
        row.update(key=key, image=image, image_format=fmt)
        row["uid"] = meta["uid"] if isinstance(meta.get("uid"), str) else key
        row["caption"] = _caption(members) if members and "txt" in members else meta.get("caption")
        rows.append(row)
        reasons.append(reason)
    return _table(rows), reasons


def _table(rows: list[dict]) -> pa.Table:
    """Rows of differing .json fields as one table: a field whose values disagree in type becomes text."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    columns["image"] = pa.array([r["image"] for r in rows], pa.binary())
    return pa.table(columns) if rows else pa.table({"key": pa.array([], pa.string()),
                                                    "image": pa.array([], pa.binary())})
