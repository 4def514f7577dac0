"""``score_embeddings``: embedding heads over a cached side dataset of image embeddings; no image decoded.

Reads the float16 ``image_embedding`` of each row, by uid, from a clip_score ``embeddings_dir`` (or any
Parquet side dataset keyed by uid, ``embedding_field`` naming its list column) and writes one float32
column per ``heads`` entry (models/heads.py). A row with no cached embedding, or whose vector holds
NaN/inf or only zeros, gets null scores (never NaN) and says why in ``<stage>_error``
(``embedding_missing``, ``embedding_not_finite``), so the manifest counts them; a later ``filter``
rejects null scores as ``filter_null:<column>``. The side dataset's ``winnow.model`` metadata must be
the model each head was trained on (one error naming both otherwise).

Scores equal those of the same heads inside clip_score (``heads:``) on the same rows: both feed the
head the stored float16 vector, back to float32 and L2-normalised (docs/heads.md).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError
from winnow.stages.models.embeddings import EmbeddingSource

RESERVED = {"uid", "url", "caption", "image", "width", "height", "reject_stage", "reject_reason"}


class ScoreEmbeddings(MapStage):
    name = "score_embeddings"
    help = "embedding heads (aesthetic, NSFW, train-head) over cached image embeddings keyed by uid; no decode"
    params = (
        Param("heads", dict, {}, "{column: head spec}, e.g. {aesthetic: 'head:aesthetic-v2@/p.pth'} (docs/heads.md)"),
        Param("embeddings", str, "", "side dataset of image embeddings keyed by uid (a clip_score embeddings_dir: "
                                     "Parquet file, directory or glob)"),
        Param("embedding_field", str, "", "embedding column in the side dataset (default: image_embedding)"),
    )
    requires = ("uid",)
    reads_image = ()  # cached embeddings, no decode
    resources = Resources(cpus=1)
    batch_size = 8192

    def validate(self) -> None:
        from winnow.stages.models import heads as H

        where = f"stage '{self.instance_name}'"
        if not self.heads:
            raise WinnowError(f"{where}: set 'heads' ({{column: head spec}}); a stage with no head does nothing")
        if not self.embeddings:
            raise WinnowError(f"{where}: set 'embeddings' (the side dataset a clip_score embeddings_dir wrote)")
        for col, spec in self.heads.items():
            if not isinstance(spec, str) or not col:
                raise WinnowError(f"{where}: heads must map column names to head spec strings")
            if col in RESERVED or col == self.error_column:
                raise WinnowError(f"{where}: head column '{col}' would overwrite a canonical or the error column")
            H.parse_head(spec, where=f"{where} heads.{col}")

    @property
    def error_column(self) -> str:
        return f"{self.instance_name}_error"

    def produces(self) -> dict:
        return {**{col: pa.float32() for col in self.heads}, self.error_column: pa.string()}

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_heads", "_source"):
            state.pop(key, None)
        state["_ready"] = False
        return state

    def setup(self) -> None:
        from winnow.stages.models import heads as H

        where = f"stage '{self.instance_name}'"
        self._source = EmbeddingSource("", self.embeddings, self.embedding_field, where)
        self._source.open()
        self._heads = {col: H.load_head(spec, where=f"{where} heads.{col}") for col, spec in self.heads.items()}
        for col, head in self._heads.items():
            head.check(self._source.model, self._source.dim, f"{where} heads.{col}")

    def provenance(self) -> dict:
        heads = getattr(self, "_heads", None)
        if heads is None:
            return {"heads": dict(self.heads), "embeddings": self.embeddings}
        return {"heads": {c: h.provenance() for c, h in heads.items()}, "embeddings": self.embeddings}

    def process_batch(self, table: pa.Table) -> pa.Table:
        col = self._source.raw(table)
        n = len(col)
        have = col.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
        ok = have.copy()
        outs = {c: np.full(n, np.nan, np.float32) for c in self._heads}
        if have.any():
            valid = col if have.all() else col.filter(pa.array(have))
            emb = valid.flatten().to_numpy(zero_copy_only=False).reshape(len(valid), -1)
            x = emb.astype(np.float32)
            ok[have] = np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)  # a NaN would poison every head
            usable = ok[have]
            for c, head in self._heads.items():
                if usable.any():
                    outs[c][ok] = head(emb[usable])
        errors = np.where(have, np.where(ok, None, "embedding_not_finite"), "embedding_missing")
        for c, vals in outs.items():
            table = set_column(table, c, pa.array(vals, pa.float32(), mask=~np.isfinite(vals)))
        return set_column(table, self.error_column, pa.array(errors.tolist(), pa.string()))
