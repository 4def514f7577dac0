"""Reading a side dataset of embeddings keyed by uid (clip_score's ``embeddings_dir``), shared by families.

``EmbeddingSource`` gives a batch's rows their vectors from a column of the table or from the side
dataset looked up by uid; ``list_to_matrix`` turns a list column into float32 unit vectors. Both the
dedup stages and the embedding heads (filter family) read through here, so every reader normalises
the stored float16 vectors the same way.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.stages import storage
from winnow.stages.errors import WinnowError


class EmbeddingSource:
    """Image embeddings for rows, from a column of the table or a side dataset looked up by uid."""

    def __init__(self, column: str, side_path: str, field: str, where: str):
        if not column and not side_path:
            raise WinnowError(f"{where}: set 'embedding_column' or 'embeddings' (a side dataset keyed by uid)")
        self.column, self.side_path, self.field, self.where = column, side_path, field, where
        self._side = None
        self.model: str | None = None  # the side dataset's ``winnow.model`` metadata (clip_score writes it)

    def open(self) -> None:
        if self.column:
            return
        try:
            self._side = storage.dataset(self.side_path)
        except (OSError, ValueError, pa.ArrowInvalid) as exc:
            raise WinnowError(f"{self.where}: embeddings {self.side_path}: cannot be read ({exc})") from None
        schema = self._side.schema
        meta = schema.metadata or {}
        self.model = meta.get(b"winnow.model", b"").decode() or None
        if "uid" not in schema.names:
            raise WinnowError(f"{self.where}: embeddings {self.side_path}: no 'uid' column")
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                 or pa.types.is_large_list(f.type)]
        if not self.field and "image_embedding" in lists:  # the clip_score side dataset's image half
            self.field = "image_embedding"
        if not self.field:
            if len(lists) != 1:
                raise WinnowError(f"{self.where}: embeddings {self.side_path}: set 'embedding_field' to one of "
                                  f"{', '.join(lists) or '(no list columns found)'}")
            self.field = lists[0]
        elif self.field not in schema.names:
            raise WinnowError(f"{self.where}: embeddings {self.side_path}: no column '{self.field}'")

    def vectors(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 L2-normalised embeddings and a (n,) ok mask (rows with no embedding are zeros)."""
        if self.column:
            if self.column not in table.column_names:
                raise WinnowError(f"{self.where}: embedding column '{self.column}' not found "
                                  f"(columns: {', '.join(table.column_names)})")
            col = table[self.column]
        else:
            col = self._lookup(table["uid"])
        return list_to_matrix(col, self.where)

    def raw(self, table: pa.Table) -> pa.Array:
        """The stored list column for the table's rows, as stored (null where a uid has no embedding)."""
        col = table[self.column] if self.column else self._lookup(table["uid"])
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    @property
    def dim(self) -> int | None:
        """The embedding length when the side dataset's column is fixed-size (clip_score's is)."""
        if self._side is None:
            return None
        typ = self._side.schema.field(self.field).type
        return typ.list_size if pa.types.is_fixed_size_list(typ) else None

    def _lookup(self, uids: pa.ChunkedArray) -> pa.ChunkedArray:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        # The range terms let Parquet row-group statistics skip most of a side dataset written in
        # input order (as scorers write it); is_in alone would decode every row group.
        lo, hi = pc.min_max(uids).values()
        if not lo.is_valid:
            return pa.chunked_array([pa.nulls(len(uids), self._side.schema.field(self.field).type)])
        wanted = (ds.field("uid") >= lo) & (ds.field("uid") <= hi) & ds.field("uid").isin(uids)
        found = self._side.to_table(columns=["uid", self.field], filter=wanted)
        if found.num_rows == len(uids) and found["uid"].equals(uids):  # same rows, same order: no gather
            return found[self.field]
        pos = pc.index_in(uids, value_set=found["uid"].combine_chunks())
        return found[self.field].take(pos)  # null positions -> null embeddings


def list_to_matrix(col, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A list/fixed_size_list column -> ((n, d) float32 unit vectors, ok mask)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    ok = arr.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    if not ok.any():
        return np.zeros((n, 0), np.float32), ok
    if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise WinnowError(f"{where}: embeddings must be a list of floats, got {arr.type}")
    valid = arr if ok.all() else arr.filter(pa.array(ok))
    flat = valid.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    d = len(flat) // len(valid)
    if d * len(valid) != len(flat):
        raise WinnowError(f"{where}: embeddings have different lengths")
    if ok.all():
        out = normalize(flat.reshape(n, d))
    else:
        out = np.zeros((n, d), np.float32)
        out[ok] = normalize(flat.reshape(len(valid), d))
    norms = np.einsum("ij,ij->i", out, out)  # 1 for a good row; 0 (all zeros) or NaN/inf otherwise
    ok &= np.isfinite(norms) & (norms > 0.5)
    return out, ok


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); a new float32 array."""
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))[:, None]
    return (x * (1.0 / np.where(norm > 0, norm, 1))).astype(np.float32, copy=False)
