"""CLIP-score and DFN filters: score every image-caption pair, then keep by threshold and/or top fraction.

A global stage (DESIGN.md §3): ``prepare`` scores (the GPU work, see stages/_clip_engine.py),
``partial``/``combine``/``finalize`` turn all scores of the run into one threshold, ``apply`` rejects.
``keep_top`` is therefore a fraction of the WHOLE run, identical whatever the sharding: scores are
counted on a fixed 1e-6 grid (stages/filter/keep_top.py, shared with ``filter``), so partials
add up and the threshold is the k-th largest grid value, k = ceil(keep_top x scored rows).

Columns: ``<column>`` (float32 cosine in [-1, 1]; column defaults to the stage name, with ``_score``
appended unless it already ends so: ``clip_score`` -> clip_score, ``dfn`` -> dfn_score), one column
per ``extra_models`` entry (scored from the same decoded pixels: several scorers decode once), one
float32 column per ``heads`` entry (an embedding head, models/heads.py, on the image embeddings of the
stage model it was trained on: no extra decode, no extra encoder pass; docs/heads.md), and
``<column>_error`` (why a row could not be scored; such rows are rejected with that reason:
``decode:<reason>`` or ``caption_missing``). Rejections: ``below_min_score``, ``below_keep_top``.

Embeddings side dataset (``embeddings_dir``; relative paths live under the run's output dir):
``<dir>/part-<16 hex>.parquet``, one file per scored batch (name = hash of its uids, so a retry
overwrites it), columns ``uid`` string, ``image_embedding`` and ``text_embedding``
fixed_size_list<halffloat>[D], both L2-normalised, of the primary ``model`` only; schema metadata
``winnow.model``, ``winnow.sha256``, ``winnow.stage``. Every row with a score has exactly one entry
per run; a rerun with different batching may leave an extra file with the same uids and values, so
readers should keep one row per uid. ``dot(image_embedding, text_embedding)`` is the score to ~1e-3.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa

from winnow.stages import storage
from winnow.stages.base import GlobalStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError
from winnow.stages.filter import keep_top as top

DEFAULT_CLIP = "open_clip:ViT-L-14/openai"  # DataComp's CLIP-score filter model
DEFAULT_DFN = "open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
RESERVED = {"uid", "url", "caption", "image", "width", "height", "reject_stage", "reject_reason"}


def _params(model: str, keep_top: float) -> tuple[Param, ...]:
    return (
        Param("model", str, model, "model spec: open_clip:ARCH/TAG, open_clip:hf-hub:ORG/REPO or open_clip:ARCH@CKPT"),
        Param("column", str, "", "score column (default: stage name, + '_score' unless it ends so)"),
        Param("min_score", float, None, "reject rows whose score is below this (null = off)",
              min=-1.0, max=1.0),
        Param("keep_top", float, keep_top, "keep this fraction of the run's scored rows, by a global threshold "
                                           "(0 = off)", min=0.0, max=1.0),
        Param("extra_models", dict, {}, "more scorers from the same decoded images: {column: model spec}; "
                                        "scores only, no filtering"),
        Param("heads", dict, {}, "embedding heads on the same image embeddings: {column: head spec}, e.g. "
                                 "{aesthetic: 'head:aesthetic-v2@/p.pth'}; one float32 column each (docs/heads.md)"),
        Param("embeddings_dir", str, "", "write float16 image/text embeddings keyed by uid here "
                                         "(relative = under the run output dir; '' = off)"),
        Param("device", str, "auto", "auto (cuda when available), cpu, cuda or cuda:N"),
        Param("precision", str, "auto", "encoder precision (auto: fp16 on GPU, fp32 on CPU)",
              ("auto", "fp32", "fp16", "bf16")),
        Param("model_batch", int, 0, "images per forward pass (0: 256 on GPU, 64 on CPU); halved on GPU OOM",
              min=0),
        Param("gpus", float, None, "GPUs per worker for the Ray runner (null: 1 when the cluster has GPUs, else 0)",
              min=0.0),
        Param("cpus", float, 2.0, "CPU cores per worker (image decode threads)", min=0.0, open_min=True),
        Param("draft", bool, True, "JPEG draft-mode (DCT-domain) downscale before resizing on CPU"),
        Param("gpu_decode", bool, True, "decode JPEGs with nvJPEG on the GPU"),
        Param("exif_transpose", bool, True, "rotate images upright by their EXIF orientation first"),
        Param("max_pixels", int, 178_956_970, "reject larger images as decode:too_large", min=0),
    )


class ClipScore(GlobalStage):
    name = "clip_score"
    help = "CLIP score of each image-caption pair; filter by min_score and/or keep_top (global fraction)"
    params = _params(DEFAULT_CLIP, 0.0)
    requires = ("image", "caption")
    resources = Resources(cpus=2.0, gpus=None)  # the typical worker; each instance sets its own in validate()
    batch_size = 2048
    stateful = True
    reads_image = ("prepare",)  # scores; the threshold (partial, apply) reads the score only

    # -- declaration ------------------------------------------------------------------------------
    def validate(self) -> None:
        from winnow.stages.models import clip as models

        where = f"stage '{self.instance_name}'"
        self.score_column = self.config["column"] or (self.instance_name if self.instance_name.endswith("_score")
                                                 else f"{self.instance_name}_score")
        self.error_column = f"{self.score_column}_error"
        self.model_columns = {self.score_column: self.config["model"], **self.extra_models}
        if len(set(self.model_columns)) != 1 + len(self.extra_models) or self.error_column in self.model_columns:
            raise WinnowError(f"{where}: extra_models column names must differ from '{self.score_column}'")
        taken = sorted(set(self.model_columns) & RESERVED)
        if taken:
            raise WinnowError(f"{where}: score column '{taken[0]}' would overwrite a canonical column")
        for col, spec in self.model_columns.items():
            if not isinstance(spec, str) or not col:
                raise WinnowError(f"{where}: extra_models must map column names to model spec strings")
            models.parse_spec(spec, where=f"{where} parameter '{'model' if col == self.score_column else col}'")
        self.head_specs = self._check_heads(where)
        if not _DEVICE.match(self.device):
            raise WinnowError(f"{where}: parameter 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        # gpus=None is resolved by the runner against the cluster; the device is picked in setup()
        self.resources = Resources(cpus=self.cpus, gpus=0.0 if self.device == "cpu" else self.config["gpus"])

    def _check_heads(self, where: str) -> dict:
        """head column -> (head spec, model column it reads); the head's model must be one of the stage's."""
        from winnow.stages.models import heads as H

        out = {}
        for col, spec in self.heads.items():
            if not isinstance(spec, str) or not col:
                raise WinnowError(f"{where}: heads must map column names to head spec strings")
            if col in self.model_columns or col == self.error_column or col in RESERVED:
                raise WinnowError(f"{where}: head column '{col}' would overwrite a score or canonical column")
            head = H.load_head(spec, where=f"{where} heads.{col}")
            src = next((c for c, m in self.model_columns.items() if H.same_model(head.model, m)), None)
            if src is None:
                head.check(self.config["model"], None, f"{where} heads.{col}")  # raises, naming both models
            out[col] = (spec, src)
        return out

    def __getstate__(self):  # a set-up stage ships to workers without its models and threads
        state = dict(self.__dict__)
        state.pop("_engine", None)
        state["_ready"] = False
        return state

    def produces(self) -> dict:
        return {**{col: pa.float32() for col in [*self.model_columns, *self.head_specs]},
                self.error_column: pa.string()}

    def setup(self) -> None:
        from winnow.stages.filter.clip_engine import ClipEngine, default_threads

        self._emb_dir = self._embeddings_path()
        device = self.device
        if self.gpus_given() and device == "auto":  # a worker given a GPU uses it (raises if it sees none)
            device = "cuda"
        self._engine = ClipEngine(self.model_columns, device=device, precision=self.precision,
                                  model_batch=self.model_batch, threads=default_threads(self.cpus), draft=self.draft,
                                  exif=self.exif_transpose, gpu_decode=self.gpu_decode, max_pixels=self.max_pixels,
                                  embeddings=bool(self._emb_dir), heads=self._load_heads())
        self._engine.setup()
        for col, (head, src) in self._engine.heads.items():
            head.check(self.model_columns[src], int(self._engine.models[src].model.visual.output_dim),
                       f"stage '{self.instance_name}' heads.{col}")

    def _load_heads(self) -> dict:
        from winnow.stages.models import heads as H

        return {col: (H.load_head(spec), src) for col, (spec, src) in self.head_specs.items()}

    def provenance(self) -> dict:
        from winnow.stages.models import clip as models

        engine = getattr(self, "_engine", None)
        info = engine.provenance() if engine is not None else {c: models.describe(s)
                                                               for c, s in self.model_columns.items()}
        out = dict(info[self.score_column])
        if self.head_specs:
            from winnow.stages.models import heads as H

            out["heads"] = {c: {"head": spec, "model": self.model_columns[src],
                                "sha256": models.file_sha256(H.parse_head(spec).path)}
                            for c, (spec, src) in self.head_specs.items()}
        if self.extra_models:
            out["extra_models"] = {c: v for c, v in info.items() if c != self.score_column}
        return out

    # -- scoring (prepare) --------------------------------------------------------------------------
    def prepare(self, table: pa.Table) -> pa.Table:
        res = self._engine.score(table["image"].to_pylist(), table["caption"].to_pylist())
        for col, vals in res.scores.items():
            table = set_column(table, col, pa.array(vals, pa.float32(), mask=np.isnan(vals)))
        table = set_column(table, self.error_column, pa.array(res.errors, pa.string()))
        if self._emb_dir and len(res.scored):
            self._write_embeddings(table["uid"].take(pa.array(res.scored)), res.image_emb, res.text_emb)
        return table

    def _embeddings_path(self) -> str:
        path = self.embeddings_dir
        if not path:
            return path
        if self.context.write_table is None:
            raise WinnowError(f"stage '{self.instance_name}': embeddings_dir needs a runner to write through "
                              "(winnow stage / winnow run)")
        return path if storage.isabs(path) else storage.join(self.context.run_dir, path)

    def _write_embeddings(self, uids: pa.Array, image_emb: np.ndarray, text_emb: np.ndarray) -> None:
        dim = image_emb.shape[1]
        digest = hashlib.blake2b("\x00".join(uids.to_pylist()).encode("utf-8", "surrogatepass"),
                                 digest_size=8).hexdigest()
        prov = self.provenance()
        table = pa.table({
            "uid": uids.cast(pa.string()),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(image_emb.reshape(-1)), dim),
            "text_embedding": pa.FixedSizeListArray.from_arrays(pa.array(text_emb.reshape(-1)), dim),
        }).replace_schema_metadata({"winnow.model": prov["model"], "winnow.sha256": str(prov.get("sha256")),
                                    "winnow.stage": self.instance_name, "winnow.normalized": "l2"})
        self.context.write_table(table, storage.join(self._emb_dir, f"part-{digest}.parquet"))

    # -- global threshold ---------------------------------------------------------------------------
    def partial(self, table: pa.Table):
        if not self.keep_top or table.num_rows == 0:
            return top.EMPTY
        return top.grid_counts(table[self.score_column].drop_null().to_numpy())

    def combine(self, parts):
        return top.combine_counts(parts)

    def finalize(self, combined) -> dict:
        cut = top.threshold(combined, self.keep_top)
        return {"column": self.score_column, "keep_top": self.keep_top, "min_score": self.min_score,
                "scored_rows": cut["counted"], "threshold": cut["threshold"],
                "threshold_grid": cut["threshold_grid"], "rows_at_or_above": cut["rows_at_or_above"]}

    def apply(self, table: pa.Table, artifact: dict) -> pa.Table:
        scores = table[self.score_column].to_numpy(zero_copy_only=False).astype(np.float64)  # NaN where null
        errors = table[self.error_column].to_pylist()
        cut = artifact.get("threshold_grid")
        grid = top.to_grid(np.nan_to_num(scores, nan=-2.0))
        reasons = []
        for i, err in enumerate(errors):
            if err is not None:
                reasons.append(err)
            elif self.min_score is not None and not scores[i] >= self.min_score:
                reasons.append("below_min_score")
            elif cut is not None and grid[i] < cut:
                reasons.append("below_keep_top")
            else:
                reasons.append(None)
        return self.reject(table, reasons)


class Dfn(ClipScore):
    name = "dfn"
    help = "Data Filtering Network score (clip_score machinery, a DFN model); keeps the top 15% by default"
    params = _params(DEFAULT_DFN, 0.15)
