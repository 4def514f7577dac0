"""Find the image bytes of the few rows the report shows, and turn them into small inline thumbnails.

The manifest holds no bytes; kept rows have them in OUT/kept/, images a stage produced (``download``)
are in the segment checkpoints under OUT/work/, and the input's own images are in the input only
(checkpoints refer to input rows: pipeline/rowrefs.py), read back by a row's position in its shard's
manifest part (input order). Files of the shards the rows came from are searched first; per row group
only the ``uid`` column is read unless it holds a wanted row, so the cost is bounded by the sample, not
by the run.
"""
from __future__ import annotations

import base64
import io
import os
import re
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline import rowrefs, rundir
from winnow.pipeline.inputs import Shard
from winnow.stages import storage
from winnow.stages.errors import WinnowError

# Larger images are not decoded for a preview: their size says enough and decoding costs seconds.
MAX_PREVIEW_PIXELS = 40_000_000
EXTRA_FIELDS = ("caption", "caption_synthetic")
_STEM = re.compile(r"part-([^.]+)")
_SEG = re.compile(r"seg-(\d+)")


def _stem(path: str) -> str | None:
    m = _STEM.search(os.path.basename(path))
    return m.group(1) if m else None


def candidate_files(run_dir: str, stems: set[str]) -> list[str]:
    """kept/ and work/ Parquet files, those of ``stems`` first, later segments before earlier ones."""
    kept = (storage.glob(storage.join(run_dir, "kept", "*.parquet")))
    work = [p for p in storage.glob(storage.join(run_dir, "work", "**", "*.parquet"))
            if ".tmp-" not in os.path.basename(p)]

    def seg(p: str) -> int:
        m = _SEG.search(p)
        return -int(m.group(1)) if m else 0

    work.sort(key=lambda p: (seg(p), p))
    ordered = [p for p in kept + work if _stem(p) in stems]
    return ordered + [p for p in work if _stem(p) not in stems]


def fetch_rows(run_dir: str, wanted: dict[str, str | None]) -> dict[str, dict]:
    """uid -> {"image": bytes, "caption": ..., ...} for every wanted uid found (``wanted``: uid -> stem).
    A row found only without bytes (a failed download, or a checkpoint's nulled input image) is returned
    so, unless the input has its bytes."""
    remaining = set(wanted)
    found: dict[str, dict] = {}
    bare: dict[str, dict] = {}  # found, but with no image bytes
    stems = {s for s in wanted.values() if s is not None}
    for path in candidate_files(run_dir, stems):
        if not remaining:
            break
        pf = storage.parquet_file(path)
        names = pf.schema_arrow.names
        if "uid" not in names or "image" not in names:
            continue
        cols = ["uid", "image", *[c for c in EXTRA_FIELDS if c in names]]
        for g in range(pf.metadata.num_row_groups):
            mask = pc.is_in(pf.read_row_group(g, columns=["uid"])["uid"], value_set=pa.array(sorted(remaining)))
            if not pc.any(mask).as_py():
                continue
            for row in pf.read_row_group(g, columns=cols).filter(mask).to_pylist():
                if row["uid"] in remaining and row["image"] is None:
                    bare.setdefault(row["uid"], row)
                elif row["uid"] in remaining:
                    found[row["uid"]] = row
                    remaining.discard(row["uid"])
            if not remaining:
                break
    if remaining:
        for uid, image in from_input(run_dir, remaining, stems).items():
            found[uid] = {**bare.get(uid, {"uid": uid}), "image": image}
    return {**{u: r for u, r in bare.items() if u not in found}, **found}


def from_input(run_dir: str, uids: set[str], stems: set[str]) -> dict[str, bytes]:
    """uid -> the input's image bytes, for those of ``uids`` the input (as pipeline.json lists it) has
    bytes for; a shard that is gone or changed since the run gives none."""
    record = _record(run_dir)
    listing = sorted(record.get("inputs") or [], key=lambda e: e.get("stem") not in stems)  # their shards first
    columns = (record.get("config") or {}).get("columns") or {}
    found: dict[str, bytes] = {}
    for entry in listing:
        if len(found) == len(uids):
            break
        manifest = rundir.manifest_part(run_dir, entry.get("stem", ""))
        try:
            in_order = storage.read_parquet(manifest, columns=["uid"])["uid"]  # the shard's rows, input order
            positions = np.flatnonzero(pc.is_in(in_order, value_set=pa.array(sorted(uids - set(found))))
                                       .to_numpy(zero_copy_only=False))
            if not len(positions):
                continue
            shard = Shard(entry["path"], entry["index"], entry["format"], entry["key"])
            images = rowrefs.input_images(shard, columns, positions, expected_rows=len(in_order))
        except (OSError, KeyError, ValueError, pa.ArrowException, WinnowError):
            continue
        if images is not None:
            found.update((u, b) for u, b in zip(in_order.take(pa.array(positions)).to_pylist(), images.to_pylist())
                         if b is not None)
    return found


def _record(run_dir: str) -> dict:
    try:
        record = storage.read_json(rundir.pipeline_record_path(run_dir))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def thumbnail(data: bytes | None, px: int = 128) -> tuple[str | None, str]:
    """(data: URI of a small JPEG or None, a note saying what the image is or why it has no preview)."""
    from PIL import Image, ImageOps

    if data is None:
        return None, "no image bytes"
    if not data:
        return None, "0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PREVIEW_PIXELS:
                    return None, f"{w}×{h}, too large to preview"
                fmt = im.format or "?"
                im.draft("RGB", (px * 2, px * 2))  # JPEG: decode at 1/2..1/8 scale in the DCT domain
                small = ImageOps.exif_transpose(im)
                small = _to_rgb(small)
                small.thumbnail((px, px))
    except Image.DecompressionBombError:
        return None, "too large to preview"
    except Exception:
        return None, f"undecodable ({len(data):,} bytes)"
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), f"{fmt} {w}×{h}"


def _to_rgb(im):
    """RGB for JPEG output; transparent images go on white so they look as a browser shows them."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, "white")
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")
