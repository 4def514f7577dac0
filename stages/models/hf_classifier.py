"""Hugging Face image classifiers (hub id or local directory) as probability scorers.

Loading is ``AutoImageProcessor`` + ``AutoModelForImageClassification.from_pretrained``, the path
``transformers.pipeline("image-classification")`` takes, and the probabilities are what that pipeline
returns: softmax over the logits, or sigmoid when ``config.problem_type`` is multi-label (or the model
has one label), raw logits for regression, its own ``postprocess`` rules in its order. Heavy imports
happen in ``load()``, on the worker.

The revision is pinned and recorded: a hub id's resolved commit (``git:<40 hex>``, read from the local
Hugging Face cache, so nothing is fetched to find it), or for a local directory ``local:sha256:<hex>`` over
its config and weights files, so two runs that name the same path but saw different weights differ.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from winnow.stages.errors import WinnowError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_HASHED = ("config.json", "preprocessor_config.json")
_WEIGHTS = (".safetensors", ".bin")
_sha_cache: dict[tuple, str] = {}


@dataclass(frozen=True)
class ClassifierSource:
    """Where a classifier comes from: a local directory, or a hub id at a revision (None = the default branch)."""

    model: str  # the directory (absolute) or the hub id, without '@revision'
    revision: str | None = None
    local: bool = False


def parse_source(model: str, revision: str = "", where: str = "classifier") -> ClassifierSource:
    """Check ``model`` (``org/name``, ``org/name@rev`` or a directory) without loading anything."""
    if not model:
        raise WinnowError(f"{where}: parameter 'model' is required (a hub id 'org/name' or a local directory)")
    if os.path.isdir(model):
        if revision:
            raise WinnowError(f"{where}: 'revision' applies to hub ids, but model {model!r} is a local directory")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise WinnowError(f"{where}: model directory {model} has no config.json (save the model there with "
                              "save_pretrained)")
        return ClassifierSource(os.path.abspath(model), None, local=True)
    name, at, pinned = model.partition("@")
    if at and revision and pinned != revision:
        raise WinnowError(f"{where}: model {model!r} pins revision '{pinned}' but parameter 'revision' is "
                          f"'{revision}'; give one")
    if model.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise WinnowError(f"{where}: model directory {model} not found")
    if not _HUB_ID.match(name) or (at and not pinned):
        raise WinnowError(f"{where}: model {model!r} must be a hub id 'org/name' (optionally '@revision') or an "
                          "existing local directory")
    return ClassifierSource(name, pinned or revision or None)


def cached_file(source: ClassifierSource, filename: str) -> str | None:
    """A file of the model on this machine (its directory, or the Hugging Face cache), never downloaded."""
    if source.local:
        path = os.path.join(source.model, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.model, filename, revision=source.revision)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def local_id2label(source: ClassifierSource) -> dict[int, str] | None:
    """The label names from config.json when it is on this machine (config-time check), else None."""
    import json

    path = cached_file(source, "config.json")
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            id2label = json.load(f).get("id2label")
        return {int(i): str(name) for i, name in id2label.items()} if isinstance(id2label, dict) else None
    except (OSError, ValueError, AttributeError):
        return None  # unreadable here: load() reports it


def label_indices(labels: dict[str, str], id2label: dict[int, str], model: str, where: str) -> dict[str, int]:
    """column -> class index of the named label; one error listing the model's labels when one is unknown."""
    by_name = {name: i for i, name in sorted(id2label.items())}
    out = {}
    for col, name in labels.items():
        if name not in by_name:
            raise WinnowError(f"{where}: label '{name}' (column '{col}') is not a label of {model}; its labels: "
                              f"{', '.join(by_name)}")
        out[col] = by_name[name]
    return out


def resolve_revision(source: ClassifierSource) -> str:
    """``git:<commit>`` from the hub cache, ``local:sha256:<hex>`` of a directory, else ``unresolved:<rev>``."""
    if source.local:
        digest = hashlib.sha256()
        names = sorted(n for n in os.listdir(source.model) if n in _HASHED or n.endswith(_WEIGHTS))
        for name in names:
            digest.update(f"{name}\0{_file_sha256(os.path.join(source.model, name))}\0".encode())
        return f"local:sha256:{digest.hexdigest()}"
    path = cached_file(source, "config.json")
    found = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", path or "")
    return f"git:{found.group(1)}" if found else f"unresolved:{source.revision or 'main'}"


def _file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def describe(source: ClassifierSource) -> dict:
    """Provenance without loading the model (a driver that never ran setup())."""
    return {"model": source.model, "requested_revision": source.revision, "revision": resolve_revision(source)}


def activation(config) -> str:
    """What ``pipeline("image-classification")`` applies to the logits, by its own rules, in its order."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    if problem == "single_label_classification" or config.num_labels > 1:
        return "softmax"
    return str(getattr(config, "function_to_apply", "none"))


class HFClassifier:
    """One loaded image processor + classification model on one device."""

    def __init__(self, source: ClassifierSource, device, dtype, where: str = "classifier"):
        self.source, self.device, self.dtype, self.where = source, device, dtype, where

    def load(self) -> None:
        import transformers
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        kw = {"revision": self.source.revision}
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.source.model, **kw)
            model = AutoModelForImageClassification.from_pretrained(self.source.model, dtype=self.dtype, **kw)
        except (OSError, ValueError, KeyError) as exc:
            raise self._load_error(exc) from None
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.activation = activation(self.config)
        self.id2label = {int(i): str(n) for i, n in self.config.id2label.items()}
        self.info = {**describe(self.source), "labels": [self.id2label[i] for i in sorted(self.id2label)],
                     "activation": self.activation, "problem_type": getattr(self.config, "problem_type", None),
                     "model_class": type(model).__name__, "image_processor": type(self.processor).__name__,
                     "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                     "transformers": transformers.__version__}

    def _load_error(self, exc: Exception) -> WinnowError:
        if not self.source.local and cached_file(self.source, "config.json") is None:
            from huggingface_hub import constants

            rev = self.source.revision or "main"
            return WinnowError(
                f"{self.where}: model '{self.source.model}' (revision {rev}) is not available offline: it is not in "
                f"the Hugging Face cache ({constants.HF_HUB_CACHE}) and no local directory has that name; download "
                f"it once with network access (hf download {self.source.model}) or give a saved model directory")
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return WinnowError(f"{self.where}: model '{self.source.model}' cannot be loaded as an image classifier: "
                           f"{first[:300]}")

    def preprocess(self, image):
        """(3, H, W) float tensor for one RGB PIL image, exactly as the pipeline's preprocess makes it."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def probabilities(self, pixels) -> np.ndarray:
        """(n, num_labels) float32 for a (n, 3, H, W) batch: the pipeline's scores for every label."""
        import torch

        with torch.inference_mode():
            logits = self.model(pixel_values=pixels.to(self.device, self.dtype, non_blocking=True)).logits.float()
            if self.activation == "softmax":
                logits = torch.softmax(logits, dim=-1)
            elif self.activation == "sigmoid":
                logits = torch.sigmoid(logits)
        return logits.cpu().numpy()

    def provenance(self) -> dict:
        return dict(self.info)
