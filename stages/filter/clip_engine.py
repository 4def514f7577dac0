"""The scoring engine behind ``clip_score`` and ``dfn``: decode each image once, encode it with one or
more open_clip models, cosine against the caption. Stage modules stay thin; this holds the batching.

Per chunk of ``model_batch`` rows: JPEGs nvJPEG can take are decoded on the GPU (when there is one),
everything else on the CPU in a thread pool (kernels/image.py; GPU: kernels/image_gpu.py); each distinct
preprocessing (size/mean/std) is computed once and shared by the models that use it; captions are
tokenised once per tokenizer. The next chunk is prepared in a background thread while the current
one is encoded. A CUDA out-of-memory error halves the chunk and retries (and keeps the smaller size).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from winnow.kernels import image as K
from winnow.kernels import image_gpu, jpeg_header
from winnow.stages.errors import WinnowError


@dataclass
class Scored:
    """Results for one call: scores per column (NaN = not scored), per-row errors, primary embeddings."""

    scores: dict[str, np.ndarray]
    errors: list
    scored: np.ndarray  # row positions that have scores, ascending
    image_emb: np.ndarray | None = None  # (len(scored), D) float16, L2-normalised, primary model
    text_emb: np.ndarray | None = None


@dataclass
class _Prepared:
    ok: list  # chunk positions that decoded
    errors: dict  # chunk position -> reason
    pixels: dict = field(default_factory=dict)  # spec key -> (len(ok), 3, H, W) tensor on device
    tokens: dict = field(default_factory=dict)  # tokenizer key -> (len(ok), L) long tensor


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


class ClipEngine:
    def __init__(self, specs: dict[str, str], device: str = "auto", precision: str = "auto", model_batch: int = 0,
                 threads: int = 1, draft: bool = True, exif: bool = True, gpu_decode: bool = True,
                 max_pixels: int = K.DEFAULT_MAX_PIXELS, embeddings: bool = False, allow_random: bool = False,
                 heads: dict | None = None):
        self.specs = dict(specs)  # column -> model spec; the first is the primary (embeddings, filter)
        # head column -> (models/heads.Head, model column whose image embeddings it reads)
        self.heads = dict(heads or {})
        self.device_name, self.precision_name = device, precision
        self.model_batch, self.threads = model_batch, max(1, threads)
        self.draft, self.exif, self.gpu_decode, self.max_pixels = draft, exif, gpu_decode, max_pixels
        self.embeddings = embeddings
        self.allow_random = allow_random  # benchmarks only: real architectures without downloadable weights

    # ------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from winnow.stages.models import clip as models

        want = self.device_name
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise WinnowError(f"device '{want}' requested but CUDA is not available on this worker")
        self.device = torch.device(want)
        cuda = self.device.type == "cuda"
        precision = self.precision_name if self.precision_name != "auto" else ("fp16" if cuda else "fp32")
        self.models = {col: models.load_model(spec, device=str(self.device), precision=precision,
                                              allow_random=self.allow_random)
                       for col, spec in self.specs.items()}
        # one preprocessing per distinct spec; models the kernels cannot reproduce use their own transform
        self.pp_key: dict[str, object] = {}
        self.pp_specs: dict[object, K.PreprocessSpec] = {}
        for col, m in self.models.items():
            spec = K.PreprocessSpec.from_open_clip(m.preprocess_cfg)
            key = spec if spec.exact else ("own", col)
            self.pp_key[col] = key
            if spec.exact:
                self.pp_specs[spec] = spec
        self.tok_key = {col: getattr(m.tokenizer, "share_key", col) for col, m in self.models.items()}
        self.use_gpu_decode = cuda and self.gpu_decode
        self.batch = self.model_batch or (256 if cuda else 64)
        self.text_batch = 512 if cuda else 64
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="winnow-decode")
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="winnow-prefetch")
        self._queued: set = set()  # decode futures of chunks being prepared (see _drop_queued)
        self._cpu_batches: dict = {}  # (preprocessing, turn parity) -> reused normalised batch (CPU device only)
        self._cpu_turns: dict = {}  # preprocessing -> chunks prepared so far
        torch.backends.cuda.matmul.allow_tf32 = True

    def provenance(self) -> dict:
        return {col: m.provenance() for col, m in self.models.items()}

    # ------------------------------------------------------------------------------------ scoring
    def score(self, images: list, captions: list) -> Scored:
        n = len(images)
        errors: list = [None] * n
        for i, (img, cap) in enumerate(zip(images, captions)):
            if img is None:
                errors[i] = "decode:missing"
            elif len(img) == 0:
                errors[i] = "decode:empty"
            elif cap is None:
                errors[i] = "caption_missing"
        todo = [i for i in range(n) if errors[i] is None]
        scores = {col: np.full(n, np.nan, np.float32) for col in [*self.models, *self.heads]}
        emb_rows, img_parts, txt_parts = [], [], []
        chunks = [todo[k:k + self.batch] for k in range(0, len(todo), self.batch)]
        pending = self.prefetch.submit(self._prepare, chunks[0], images, captions) if chunks else None
        try:
            for c, chunk in enumerate(chunks):
                current = pending
                if c + 1 < len(chunks):
                    pending = self.prefetch.submit(self._prepare, chunks[c + 1], images, captions)
                for rows, result in self._process(chunk, images, captions, current):
                    for i, reason in result["errors"].items():
                        errors[rows[i]] = reason
                    ok_rows = [rows[p] for p in result["ok"]]
                    for col, vals in result["scores"].items():
                        scores[col][ok_rows] = vals
                    if self.embeddings and ok_rows:
                        emb_rows.extend(ok_rows)
                        img_parts.append(result["image_emb"])
                        txt_parts.append(result["text_emb"])
        except BaseException:
            self._drop_queued(pending)
            raise
        out = Scored(scores, errors, np.array(sorted(emb_rows), dtype=np.int64))
        if self.embeddings and emb_rows:
            order = np.argsort(np.array(emb_rows))
            out.image_emb = np.concatenate(img_parts)[order]
            out.text_emb = np.concatenate(txt_parts)[order]
        return out

    def _drop_queued(self, pending) -> None:
        """Ctrl-C (or an error) mid-call: cancel the prefetched chunk and the decodes still queued.

        Python joins these worker threads before the process exits, and each would first decode the
        rest of its queue (two chunks: up to 512 images on a GPU worker), delaying the exit by that much.
        """
        if pending is not None:
            pending.cancel()
        for fut in list(self._queued):
            fut.cancel()

    def _process(self, chunk, images, captions, prepared=None):
        """Yield (chunk rows, result) pairs; on CUDA OOM split the chunk in halves and retry."""
        import torch

        try:
            # a retry runs beside the prefetched next chunk: fresh buffers, not the rotating pair
            prep = prepared.result() if prepared is not None else self._prepare(chunk, images, captions, reuse=False)
            yield chunk, self._encode(prep)
        except Exception as exc:
            if not _is_oom(exc) or len(chunk) <= 1:
                raise
            torch.cuda.empty_cache()
            half = len(chunk) // 2
            self.batch = max(1, min(self.batch, half))
            yield from self._process(chunk[:half], images, captions)
            yield from self._process(chunk[half:], images, captions)

    def _prepare(self, chunk, images, captions, reuse: bool = True) -> _Prepared:
        import torch

        datas = [images[i] for i in chunk]
        gpu_pos, infos = [], {}
        if self.use_gpu_decode:
            for p, d in enumerate(datas):
                info = jpeg_header.jpeg_info(d)
                if info and info.gpu_ok and info.width * info.height <= self.max_pixels:
                    gpu_pos.append(p)
                    infos[p] = info
        gpu_set = set(gpu_pos)
        futures = {p: self.pool.submit(self._cpu_one, d) for p, d in enumerate(datas) if p not in gpu_set}
        decoded = {}
        if gpu_pos:
            for p, img in zip(gpu_pos, image_gpu.decode_jpeg_gpu([datas[p] for p in gpu_pos], self.device)):
                if img is None:  # nvJPEG refused it: PIL gets a chance (and names the problem)
                    futures[p] = self.pool.submit(self._cpu_one, datas[p])
                else:
                    decoded[p] = jpeg_header.orient(img, infos[p].orientation) if self.exif else img
        cpu_out, errors = {}, {}
        self._queued.update(futures.values())  # cancellable by _drop_queued until this chunk is done
        try:
            for p, fut in futures.items():
                try:
                    cpu_out[p] = fut.result()
                except K.DecodeError as exc:
                    errors[p] = f"decode:{exc.reason}"
        finally:
            self._queued.difference_update(futures.values())
        ok = sorted(set(decoded) | set(cpu_out))
        prep = _Prepared(ok, errors)
        if not ok:
            return prep
        where = {p: j for j, p in enumerate(ok)}
        for key, spec in self.pp_specs.items():
            if not decoded and self.device.type == "cpu":  # each crop straight into a (reused) float batch
                prep.pixels[key] = K.normalize_batch([cpu_out[p][0][key] for p in ok], spec,
                                                     out=self._reused_cpu_batch(key, len(ok), spec) if reuse else None)
                continue
            if not decoded:  # all decoded on CPU: ship uint8 (4x less than float) and normalise once, there
                arr = torch.from_numpy(np.stack([cpu_out[p][0][key] for p in ok]))
                prep.pixels[key] = K.normalize_batch(arr.to(self.device, non_blocking=True), spec)
                continue
            out = torch.empty((len(ok), 3, *spec.size), dtype=torch.float32, device=self.device)
            gpu_ok = [p for p in ok if p in decoded]
            if gpu_ok:
                out[[where[p] for p in gpu_ok]] = image_gpu.resize_crop([decoded[p] for p in gpu_ok], spec)
            cpu_ok = [p for p in ok if p in cpu_out]
            if cpu_ok:
                arr = torch.from_numpy(np.stack([cpu_out[p][0][key] for p in cpu_ok]))
                out[[where[p] for p in cpu_ok]] = arr.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            prep.pixels[key] = K.normalize_batch(out, spec)
        for col, m in self.models.items():
            key = self.pp_key[col]
            if key not in self.pp_specs:  # the model's own transform, per image (rare configurations)
                prep.pixels[key] = torch.stack([cpu_out[p][1][col] if p in cpu_out else
                                                m.preprocess(_to_pil(decoded[p])) for p in ok]).to(self.device)
        texts = [captions[chunk[p]] for p in ok]
        for col, m in self.models.items():
            if self.tok_key[col] not in prep.tokens:
                prep.tokens[self.tok_key[col]] = m.tokenize(texts)
        return prep

    def _reused_cpu_batch(self, key, n: int, spec: K.PreprocessSpec):
        """A float32 (n, 3, H, W) buffer reused across chunks on CPU.

        Two per preprocessing, taken in turn by successive ``_prepare`` calls: the prefetch thread fills
        chunk k+1 while chunk k is encoded, and chunk k+2 is only prepared after k's encode returned
        (``score`` submits it then), so a buffer is never rewritten while a model reads it.
        """
        import torch

        turn = self._cpu_turns[key] = self._cpu_turns.get(key, 0) + 1
        slot = (key, turn % 2)
        buf = self._cpu_batches.get(slot)
        if buf is None or buf.shape[0] < n:
            buf = self._cpu_batches[slot] = torch.empty((max(n, self.batch), 3, *spec.size), dtype=torch.float32)
        return buf[:n]

    def _cpu_one(self, data: bytes):
        """PIL path for one image: arrays for every exact spec, own-transform tensors for the others."""
        arrays = {}
        if self.pp_specs:
            keys = list(self.pp_specs)
            outs = K.preprocess_cpu(data, keys, draft=self.draft, exif=self.exif, max_pixels=self.max_pixels)
            arrays = dict(zip(keys, outs))
        own = {}
        for col, m in self.models.items():
            if self.pp_key[col] not in self.pp_specs:
                im, _ = K.decode_rgb(data, draft=False, exif=self.exif, max_pixels=self.max_pixels)
                own[col] = m.preprocess(im)
        return arrays, own

    def _encode(self, prep: _Prepared) -> dict:
        import torch

        from winnow.kernels.similarity import paired_cosine

        result = {"ok": prep.ok, "errors": prep.errors, "scores": {}}
        if not prep.ok:
            result["image_emb"] = result["text_emb"] = None
            return result
        with torch.inference_mode():
            for k, (col, m) in enumerate(self.models.items()):
                img = m.encode_image(prep.pixels[self.pp_key[col]])
                txt = self._encode_text(m, prep.tokens[self.tok_key[col]])
                scores, a, b = paired_cosine(img, txt)
                result["scores"][col] = scores.cpu().numpy()
                heads = [(hcol, head) for hcol, (head, src) in self.heads.items() if src == col]
                a16 = a.half().cpu().numpy() if heads or (k == 0 and self.embeddings) else None
                for hcol, head in heads:  # the float16 numbers embeddings_dir stores: see models/heads.py
                    result["scores"][hcol] = head(a16)
                if k == 0 and self.embeddings:
                    result["image_emb"] = a16
                    result["text_emb"] = b.half().cpu().numpy()
        return result

    def _encode_text(self, m, tokens):
        """Captions sorted by token length and encoded in groups, each trimmed to its longest caption."""
        import torch

        lengths = tokens.argmax(dim=-1)
        order = torch.argsort(lengths, stable=True)
        parts = [m.encode_text(tokens[idx]) for idx in torch.split(order, self.text_batch)]
        feats = torch.cat(parts)
        out = torch.empty_like(feats)
        out[order.to(feats.device)] = feats
        return out

    def close(self) -> None:
        for ex in (getattr(self, "pool", None), getattr(self, "prefetch", None)):
            if ex is not None:
                ex.shutdown(wait=False)


def _to_pil(chw):
    from PIL import Image

    return Image.fromarray(chw.permute(1, 2, 0).cpu().numpy())


def default_threads(cpus: float) -> int:
    return max(1, min(int(cpus), os.cpu_count() or 1))
