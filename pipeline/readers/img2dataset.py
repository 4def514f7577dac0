"""img2dataset's own outcome per row, and its ``files`` output format.

Every img2dataset output format lists each input row once with ``key``, ``status`` and ``error_message``.
The rows it failed to fetch are rejections of the download that already happened: ``reject_stage
'download'`` with the reason winnow's own download stage gives for the same (status, error_message)
(``stages/download/reasons.classify``), so a pool downloaded by img2dataset and one downloaded by winnow
read the same in the manifest, and a failed row is never fetched again.
"""
from __future__ import annotations

import pyarrow as pa

from winnow.pipeline.readers.layout import read_listing, stem_of
from winnow.pipeline.readers.webdataset import IMAGE_EXTS
from winnow.stages import storage
from winnow.stages.download.reasons import classify

STATUSES = {"success", "failed_to_download", "failed_to_resize"}
ERROR_CHARS = 500  # as the download stage keeps them


def download_outcomes(table: pa.Table) -> tuple[list[str | None], list[str | None]] | None:
    """(reason, error message) per row from img2dataset's status columns; None when the table is not
    img2dataset output (all three columns, and only img2dataset's status values)."""
    if not {"key", "status", "error_message"} <= set(table.column_names):
        return None
    statuses = table["status"].to_pylist()
    if not set(statuses) <= STATUSES:
        return None
    errors = table["error_message"].to_pylist()
    reasons = [classify(s, e) for s, e in zip(statuses, errors)]
    messages = [None if r is None else (e or s or "")[:ERROR_CHARS] for r, s, e in zip(reasons, statuses, errors)]
    return reasons, messages


def read_files(path: str) -> tuple[pa.Table, list[str | None]]:
    """img2dataset ``files``: ``00000.parquet`` lists the rows, ``00000/{key}.jpg`` (.txt, .json) hold the
    successes. A success whose image file is gone is that row's rejection (``missing_image_file``)."""
    folder = stem_of(path)
    meta = read_listing(path, f"the files in {folder}/")
    by_key: dict[str, tuple[str, str]] = {}
    for name in storage.listdir(folder):
        key, _, ext = name.partition(".")
        if ext.lower() in IMAGE_EXTS and key not in by_key:
            by_key[key] = (storage.join(folder, name), ext.lower())
    statuses = meta["status"].to_pylist() if "status" in meta.column_names else ["success"] * meta.num_rows
    images, formats, reasons = [], [], []
    for key, status in zip(meta["key"].to_pylist(), statuses):
        found = by_key.get(key) if status == "success" else None
        data = None
        if found is not None:
            data = storage.read_bytes(found[0])
        images.append(data)
        formats.append(found[1] if found else None)
        reasons.append("missing_image_file" if status == "success" and found is None else None)
    if "uid" not in meta.column_names:
        meta = meta.append_column("uid", meta["key"])
    meta = meta.drop_columns([c for c in ("image", "image_format") if c in meta.column_names])
    meta = meta.append_column("image", pa.array(images, pa.binary()))
    return meta.append_column("image_format", pa.array(formats, pa.string())), reasons
