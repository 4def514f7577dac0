"""``image_classify``: the probability of named labels from any Hugging Face image classifier.

A watermark, NSFW or quality classifier on the hub (or saved in a directory) becomes a scorer: each
``labels`` entry ``{column: label}`` adds a float32 column holding that label's probability, the number
``transformers.pipeline("image-classification", top_k=None)`` gives for it (models/hf_classifier.py).
``reject_above`` / ``reject_below`` (``{column: threshold}``) reject on the spot, with the reason
``classifier:<column>><threshold>`` / ``classifier:<column><<threshold>``; or keep the scores and filter
later with ``filter`` (``keep_where: "pwatermark < 0.8"``).

Images are decoded by the repo's kernels (kernels/image.py: the decompression-bomb guard, EXIF
orientation and RGB conversion the pipeline's ``load_image`` applies, with precise per-row reasons), then
handed to the model's own image processor, one image at a time in a thread pool (memory stays bounded by
the model's input size, not the photos'); the model runs on batches of ``model_batch``, on the GPU when
there is one. An image that cannot be decoded is rejected (``decode:<reason>``, as clip_score does), its
columns null. ``draft: true`` lets JPEGs decode at a DCT-domain reduction toward the processor's size
(faster on CPU; scores move slightly away from the pipeline's).
"""
from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from winnow.kernels import image as K
from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
RESERVED = {"uid", "url", "caption", "image", "width", "height", "reject_stage", "reject_reason"}


class ImageClassify(MapStage):
    name = "image_classify"
    help = "probability of named labels (watermark, nsfw, ...) from a Hugging Face image classifier; thresholds"
    params = (
        Param("model", str, "", "hub id 'org/name' (optionally '@revision') or a directory saved by save_pretrained"),
        Param("revision", str, "", "hub revision (branch, tag or commit) to pin; the resolved commit is recorded"),
        Param("labels", dict, {}, "{column: label name}: one float32 probability column per label, "
                                  "e.g. {pwatermark: watermark}"),
        Param("reject_above", dict, {}, "{column: t}: reject rows whose probability is above t"),
        Param("reject_below", dict, {}, "{column: t}: reject rows whose probability is below t"),
        Param("device", str, "auto", "auto (cuda when available), cpu, cuda or cuda:N"),
        Param("precision", str, "auto", "model precision (auto: fp16 on GPU, fp32 on CPU)",
              ("auto", "fp32", "fp16", "bf16")),
        Param("model_batch", int, 0, "images per forward pass (0: 256 on GPU, 32 on CPU)", min=0),
        Param("gpus", float, None, "GPUs per worker for the Ray runner (null: 1 when the cluster has GPUs, else 0)",
              min=0.0),
        Param("cpus", float, 2.0, "CPU cores per worker (decode threads)", min=0.0, open_min=True),
        Param("draft", bool, False, "JPEG draft-mode (DCT-domain) downscale toward the model's input size first"),
        Param("max_pixels", int, K.DEFAULT_MAX_PIXELS, "reject larger images as decode:too_large", min=0),
    )
    requires = ("image",)
    reads_image = ("process_batch",)
    resources = Resources(cpus=2.0, gpus=None)  # each instance sets its own in validate()
    batch_size = 1024
    stateful = True

    def validate(self) -> None:
        from winnow.stages.models import hf_classifier as HF

        self.where = where = f"stage '{self.instance_name}'"
        self.source = HF.parse_source(self.model, self.revision, where)
        if not self.labels:
            raise WinnowError(f"{where}: set 'labels' ({{column: label name}}, e.g. {{pwatermark: watermark}})")
        for col, label in self.labels.items():
            if not isinstance(col, str) or not col or not isinstance(label, str) or not label:
                raise WinnowError(f"{where}: labels must map column names to label names, got {col!r}: {label!r}")
            if col in RESERVED:
                raise WinnowError(f"{where}: labels column '{col}' would overwrite a canonical column")
        for param in ("reject_above", "reject_below"):
            for col, t in self.config[param].items():
                if col not in self.labels:
                    raise WinnowError(f"{where}: {param} names column '{col}', which is not in labels "
                                      f"({', '.join(self.labels)})")
                if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                    raise WinnowError(f"{where}: {param}.{col} must be a number, got {t!r}")
        id2label = HF.local_id2label(self.source)  # on this machine already: check the names now, not on a worker
        if id2label is not None:
            HF.label_indices(self.labels, id2label, self.source.model, where)
        if not _DEVICE.match(self.device):
            raise WinnowError(f"{where}: parameter 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        # gpus=None is resolved by the runner against the cluster; the device is picked in setup()
        self.resources = Resources(cpus=self.cpus, gpus=0.0 if self.device == "cpu" else self.config["gpus"])

    def produces(self) -> dict:
        return {col: pa.float32() for col in self.labels}

    def __getstate__(self):  # a set-up stage ships to workers without its model and threads
        state = dict(self.__dict__)
        for key in ("_clf", "_pool"):
            state.pop(key, None)
        state["_ready"] = False
        return state

    def setup(self) -> None:
        import torch

        from winnow.stages.models.hf_classifier import HFClassifier, label_indices

        want = self.device
        if self.gpus_given() and want == "auto":  # a worker given a GPU uses it (raises if it sees none)
            want = "cuda"
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise WinnowError(f"{self.where}: device '{want}' requested but CUDA is not available on "
                              f"{self.context.node or 'this worker'}")
        device = torch.device(want)
        cuda = device.type == "cuda"
        precision = self.precision if self.precision != "auto" else ("fp16" if cuda else "fp32")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self._clf = HFClassifier(self.source, device, dtype, self.where)
        self._clf.load()
        self._columns = label_indices(self.labels, self._clf.id2label, self.source.model, self.where)
        self._chunk = self.model_batch or (256 if cuda else 32)
        self._needed = _resize_target(self._clf.processor) if self.draft else None
        self._pool = ThreadPoolExecutor(max(1, int(self.cpus)), thread_name_prefix="winnow-classify")

    def provenance(self) -> dict:
        from winnow.stages.models import hf_classifier as HF

        clf = getattr(self, "_clf", None)
        info = clf.provenance() if clf is not None else HF.describe(self.source)
        return {**info, "columns": dict(self.labels), "draft": self.draft,
                "reject_above": dict(self.reject_above), "reject_below": dict(self.reject_below)}

    # -- scoring ------------------------------------------------------------------------------------
    def process_batch(self, table: pa.Table) -> pa.Table:
        import torch

        images = table["image"].to_pylist()
        n = len(images)
        probs = np.full((n, len(self._clf.id2label)), np.nan, np.float32)
        reasons: list = [None] * n
        chunks = [range(k, min(k + self._chunk, n)) for k in range(0, n, self._chunk)]

        def submit(c: int) -> list:
            return [self._pool.submit(self._prepare_one, images[i]) for i in chunks[c]] if c < len(chunks) else []

        current, pending = [], submit(0)
        try:
            for c, rows in enumerate(chunks):
                current, pending = pending, submit(c + 1)  # the next chunk decodes while this one is scored
                ok, pixels = [], []
                for i, fut in zip(rows, current):
                    out = fut.result()
                    if isinstance(out, str):
                        reasons[i] = out
                    else:
                        ok.append(i)
                        pixels.append(out)
                if ok:
                    probs[ok] = self._clf.probabilities(torch.stack(pixels))
        except BaseException:  # Ctrl-C or an error: do not decode the rest of the queue first
            for fut in current + pending:
                fut.cancel()
            raise
        for col, idx in self._columns.items():
            vals = probs[:, idx]
            table = set_column(table, col, pa.array(vals, pa.float32(), mask=np.isnan(vals)))
        return self.reject(table, self._threshold_reasons(probs, reasons))

    def _prepare_one(self, data):
        """The model's input tensor for one encoded image, or the reason it has none."""
        try:
            im, _ = K.decode_rgb(data, self._needed, draft=self.draft, exif=True, max_pixels=self.max_pixels)
        except K.DecodeError as exc:
            return f"decode:{exc.reason}"
        try:
            return self._clf.preprocess(im)
        except Exception as exc:  # noqa: BLE001 - a processor failing on one odd image is that row's problem
            return f"preprocess:{type(exc).__name__}"

    def _threshold_reasons(self, probs: np.ndarray, reasons: list) -> list:
        """The first threshold each scored row breaks, in the order reject_above then reject_below."""
        for param, op in (("reject_above", ">"), ("reject_below", "<")):
            for col, t in self.config[param].items():
                vals = probs[:, self._columns[col]]
                hit = vals > t if op == ">" else vals < t  # NaN (unscored) compares False
                for i in np.flatnonzero(hit):
                    if reasons[i] is None:
                        reasons[i] = f"classifier:{col}{op}{t:g}"
        return reasons


def _resize_target(processor) -> tuple[int, int] | None:
    """(width, height) the processor resizes to, for JPEG draft decoding; None when it does not say."""
    size = getattr(processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    if get("height") and get("width"):
        return int(get("width")), int(get("height"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    return None
