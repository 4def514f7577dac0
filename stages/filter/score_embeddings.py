"""``score_embeddings``: embedding heads over a cached side dataset of image embeddings; no image decoded.

Reads the float16 ``image_embedding`` of each row, by uid, from a clip_score ``embeddings_dir`` (or any
Parquet side dataset keyed by uid, ``embedding_field`` naming its list column) and writes one float32
column per ``heads`` entry (models/heads.py). A row with no cached embedding gets a null score, which
a later ``filter`` rejects as ``filter_null:<column>``. The side dataset's ``winnow.model`` metadata
must be the model each head was trained on (one error naming both otherwise).

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
            if col in RESERVED:
                raise WinnowError(f"{where}: head column '{col}' would overwrite a canonical column")
            H.parse_head(spec, where=f"{where} heads.{col}")

    def produces(self) -> dict:
        return {col: pa.float32() for col in self.heads}

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
        ok = col.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
        outs = {c: np.full(n, np.nan, np.float32) for c in self._heads}
        if ok.any():
            valid = col if ok.all() else col.filter(pa.array(ok))
            flat = valid.flatten().to_numpy(zero_copy_only=False)
            emb = flat.reshape(len(valid), -1)
            for c, head in self._heads.items():
                outs[c][ok] = head(emb)
        for c, vals in outs.items():
            table = set_column(table, c, pa.array(vals, pa.float32(), mask=~ok))
        return table
