"""Eval-set decontamination: reject pool rows that near-duplicate an evaluation image (``dup:eval``).

The eval set is small (thousands to a few hundred thousand images), so every worker loads it once in
``setup()`` into an exact index — faiss ``IndexBinaryFlat`` over pHashes, ``IndexFlatIP`` over unit
embeddings — and each batch is a map: no shuffle, no barrier. ``dup_of`` is ``eval:<id>`` (the file's
path relative to the folder, or the eval Parquet's uid), so it cannot be mistaken for a pool uid.

Rows with no image (or undecodable) and no embedding cannot match and pass through unchanged.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa

from winnow.stages import storage
from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.dedup.embeddings import SOURCE_PARAMS, EmbeddingSource, list_to_matrix
from winnow.stages.dedup.perceptual import phash_column
from winnow.stages.dedup.survivors import DUP_OF
from winnow.stages.errors import WinnowError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class Decontaminate(MapStage):
    name = "decontaminate"
    help = "reject pool rows that near-duplicate an evaluation image (dup:eval) by pHash radius and/or embeddings"
    params = (
        Param("eval_images", str, "", "evaluation images: a folder of image files, or Parquet (file, directory or "
                                      "glob) with an 'image' column (and optionally 'uid' and embeddings)"),
        Param("radius", int, 6, "pHash Hamming radius of a match (-1 = do not compare pHashes)",
              min=-1, max=20),
        Param("min_similarity", float, 0.0, "embedding cosine similarity of a match (0 = do not compare embeddings)",
              min=0.0, max=1.0),
        Param("eval_embedding_field", str, "", "embedding column of the eval Parquet (for min_similarity)"),
        *SOURCE_PARAMS,
        Param("threads", int, 1, "decode threads per worker", min=1),
    )
    resources = Resources(cpus=1)
    batch_size = 1024
    stateful = True  # the eval index loads once per worker
    reads_image = ("process_batch",)  # pHashes the image when the rows have no phash column

    def validate(self):
        where = f"stage '{self.instance_name}'"
        if not self.eval_images:
            raise WinnowError(f"{where}: parameter 'eval_images' is required (a folder of images or Parquet)")
        if self.radius < 0 and self.min_similarity <= 0:
            raise WinnowError(f"{where}: nothing to compare: set radius >= 0 and/or min_similarity > 0")
        if self.min_similarity > 0:
            if not self.eval_embedding_field:
                raise WinnowError(f"{where}: min_similarity needs 'eval_embedding_field' (embeddings of the eval set)")
            self._source = EmbeddingSource(self.embedding_column, self.embeddings, self.embedding_field, where)

    def produces(self):
        return ({"phash": pa.uint64()} if self.radius >= 0 else {}) | {DUP_OF: pa.string()}

    def setup(self):
        from winnow.kernels.hamming import NearestIndex
        from winnow.kernels.phash import phash_bytes

        ids, images, eval_emb = load_eval_set(self.eval_images, self.eval_embedding_field if self.min_similarity > 0
                                              else "", f"stage '{self.instance_name}'")
        self._ids = ids
        self._listing = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        if self.radius >= 0:
            hashes, ok = phash_bytes(images, threads=self.threads)
            self._hash_rows = np.flatnonzero(ok)
            self._hash_index = NearestIndex(hashes[ok])
        if self.min_similarity > 0:
            import faiss

            self._source.open()
            vectors, ok = list_to_matrix(eval_emb, f"stage '{self.instance_name}': eval embeddings")
            self._emb_rows = np.flatnonzero(ok)
            self._emb_index = faiss.IndexFlatIP(vectors.shape[1])
            self._emb_index.add(np.ascontiguousarray(vectors[ok]))

    def provenance(self):
        return {"eval_images": storage.abspath(self.eval_images), "eval_count": len(getattr(self, "_ids", [])),
                "eval_listing_sha256": getattr(self, "_listing", None)}

    def process_batch(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        match = np.full(n, -1, dtype=np.int64)  # eval row index per pool row
        if self.radius >= 0:
            if "image" not in table.column_names and "phash" not in table.column_names:
                raise WinnowError(f"stage '{self.instance_name}': pHash matching needs an 'image' column "
                                  f"(columns: {', '.join(table.column_names)}); or set radius: -1")
            hashes, ok = phash_column(table, self.threads)
            table = set_column(table, "phash", pa.array(hashes, pa.uint64(), mask=~ok))
            dist, idx = self._hash_index.nearest(hashes)
            hit = ok & (dist <= self.radius) & (idx >= 0)
            match[hit] = self._hash_rows[idx[hit]]
        if self.min_similarity > 0 and self._emb_index.ntotal:
            vectors, ok = self._source.vectors(table)
            todo = np.flatnonzero(ok & (match < 0))
            if len(todo):
                sim, idx = self._emb_index.search(np.ascontiguousarray(vectors[todo]), 1)
                hit = sim[:, 0] >= self.min_similarity
                match[todo[hit]] = self._emb_rows[idx[hit, 0]]
        reasons = [None if m < 0 else "dup:eval" for m in match]
        table = self.reject(table, reasons)
        return set_column(table, DUP_OF, pa.array([None if m < 0 else f"eval:{self._ids[m]}" for m in match],
                                                  pa.string()))


def load_eval_set(path: str, embedding_field: str, where: str) -> tuple[list[str], list[bytes], pa.Array | None]:
    """(ids, encoded images, embeddings or None) of a folder of images or a Parquet eval set."""
    folder = storage.isdir(path)
    listed = storage.list_files(path, recursive=True) if folder else []
    if folder and not any(f.endswith(".parquet") for f in listed):
        files = [f for f in listed if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        if not files:
            raise WinnowError(f"{where}: eval_images {path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        if embedding_field:
            raise WinnowError(f"{where}: eval_images {path} is a folder: embeddings need a Parquet eval set")
        images = [storage.read_bytes(f) for f in files]
        return [storage.relpath(f, path) for f in files], images, None
    try:
        table = storage.dataset(path).to_table()
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise WinnowError(f"{where}: eval_images {path}: not a folder of images or readable Parquet ({exc})") from None
    if table.num_rows == 0:
        raise WinnowError(f"{where}: eval_images {path}: no rows")
    if "image" not in table.column_names and not embedding_field:
        raise WinnowError(f"{where}: eval_images {path}: no 'image' column (columns: {', '.join(table.column_names)})")
    if embedding_field and embedding_field not in table.column_names:
        raise WinnowError(f"{where}: eval_images {path}: no embedding column '{embedding_field}'")
    ids = (table["uid"].cast(pa.string()).to_pylist() if "uid" in table.column_names
           else [f"{os.path.basename(path.rstrip('/'))}#{i}" for i in range(table.num_rows)])
    images = table["image"].to_pylist() if "image" in table.column_names else [None] * table.num_rows
    emb = table[embedding_field] if embedding_field else None
    return ids, images, emb

