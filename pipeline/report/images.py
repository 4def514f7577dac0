"""Find the image bytes of the few rows the report shows, and turn them into small inline thumbnails.

The manifest holds no bytes; kept rows have them in OUT/kept/ and every row (rejected ones too) in
the segment checkpoints under OUT/work/. Files of the shards the rows came from are searched first;
per row group only the ``uid`` column is read unless it holds a wanted row, so the cost is bounded
by the sample, not by the run.
"""
from __future__ import annotations

import base64
import io
import os
import re
import warnings

import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages import storage

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
    """uid -> {"image": bytes, "caption": ..., ...} for every wanted uid found (``wanted``: uid -> stem)."""
    remaining = set(wanted)
    found: dict[str, dict] = {}
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
                if row["uid"] in remaining:
                    found[row["uid"]] = row
                    remaining.discard(row["uid"])
            if not remaining:
                break
    return found


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
