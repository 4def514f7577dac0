"""Image embeddings for dedup stages: from a column, or from a side dataset keyed by uid (clip_score's).

Rows carry them between stages as ``semdedup_embedding``: L2-normalised float16 bytes in a
large_binary column, which the manifest leaves out (binary columns are not decisions).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.stages.base import Param
from winnow.stages.models.embeddings import EmbeddingSource, list_to_matrix, normalize  # noqa: F401

EMB = "semdedup_embedding"

SOURCE_PARAMS = (
    Param("embedding_column", str, "", "column holding image embeddings (list/fixed_size_list of floats)"),
    Param("embeddings", str, "", "side dataset of embeddings (Parquet file, directory or glob keyed by uid), "
                                 "e.g. the clip_score stage's; used when embedding_column is empty"),
    Param("embedding_field", str, "", "embedding column inside the side dataset (default: image_embedding, "
                                      "else its only list column)"),
)


def emb_column(vectors: np.ndarray, ok: np.ndarray) -> pa.Array:
    """Unit vectors as float16 bytes per row (null where not ok), built from buffers without copies per row."""
    n = len(ok)
    if vectors.shape[1] == 0 or not ok.any():
        return pa.nulls(n, pa.large_binary())
    h = np.ascontiguousarray(vectors.astype(np.float16))
    sizes = np.where(ok, h.shape[1] * 2, 0)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    data = h[ok].tobytes()
    validity = None if ok.all() else pa.py_buffer(np.packbits(ok, bitorder="little").tobytes())
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [validity, pa.py_buffer(offsets.tobytes()),
                                                                  pa.py_buffer(data)])


def emb_matrix(col) -> tuple[np.ndarray, np.ndarray]:
    """The float16 bytes column back to ((n, d) float32 unit vectors, ok mask); missing rows are zeros."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    ok = arr.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    if not ok.any():
        return np.zeros((n, 0), np.float32), ok
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    starts, sizes = offsets[:-1][ok], np.diff(offsets)[ok]
    width = int(sizes[0])
    if (sizes != width).any() or width % 2:
        raise ValueError(f"column {EMB}: rows of different sizes")
    if (np.diff(starts) == width).all():  # the usual case: valid rows back to back, one slice
        rows = data[starts[0]:starts[0] + width * len(starts)].reshape(-1, width)
    else:
        rows = data[starts[:, None] + np.arange(width)[None, :]]
    out = np.zeros((n, width // 2), np.float32)
    out[ok] = rows.view(np.float16)
    return normalize(out), ok
