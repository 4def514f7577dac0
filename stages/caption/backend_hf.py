"""Batched caption generation with Hugging Face transformers (the default recaption backend).

Loads any captioning / image-text-to-text checkpoint by hub id or local directory through
``AutoProcessor`` + the auto model class its config maps to, and generates for a chunk of
(image, prompt) pairs in one ``generate`` call. Batched output equals one-at-a-time output:

* decoder-only models (Qwen2-VL, LLaVA, ...) are left-padded; ``generate`` derives position ids
  (Qwen2-VL: its 3-D rope index) from the attention mask, so padding shifts nothing;
* BLIP-family models put the prompt in a text decoder with absolute positions and overwrite
  column 0 with BOS, which left padding would break: they are batched by exact prompt length
  ("bucket"), so no row is ever padded;
* encoder-decoder models (Florence-2) pad the encoder input on the right, as trained;
* sampling adds per-row counter-based Gumbel noise (kernels/seeded_sampling.py) instead of
  ``torch.multinomial``, so a row's samples depend on (seed, uid, k), never on its batch.

Heavy imports (torch, transformers) happen in ``load()``, on the worker.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import os
import re
from dataclasses import dataclass

from winnow.stages.errors import WinnowError

# Prompt goes into a decoder with absolute positions and generate() rewrites column 0: never pad.
BUCKET_MODEL_TYPES = {"blip", "blip-2", "instructblip"}
AUTO_CLASS_NAMES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForSeq2SeqLM",
                    "AutoModelForCausalLM")


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


def pick_device_dtype(device: str, dtype: str):
    """(torch.device, torch.dtype): cuda when available, bf16 on GPUs that have it, fp32 on CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WinnowError(f"recaption: device '{device}' requested but CUDA is not available on this worker")
    if dtype == "auto":
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    return dev, getattr(torch, dtype)


class HFCaptioner:
    """One loaded model + processor; ``generate`` captions one chunk of images."""

    def __init__(self, model: str, revision: str | None, device: str, dtype: str, trust_remote_code: bool,
                 padding: str):
        self.model_id, self.revision = model, revision or None
        self.device_name, self.dtype_name = device, dtype
        self.trust_remote_code, self.padding_choice = trust_remote_code, padding

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoConfig, AutoProcessor

        kw = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        try:
            self.config = AutoConfig.from_pretrained(self.model_id, **kw)
            self.processor = AutoProcessor.from_pretrained(self.model_id, **kw)
        except (OSError, ValueError) as exc:
            raise WinnowError(f"recaption: cannot load model '{self.model_id}': {str(exc).splitlines()[0]} "
                              "(offline, only local directories and models already in the HF cache load)") from None
        self.device, self.dtype = pick_device_dtype(self.device_name, self.dtype_name)
        self.load_model(kw)
        self.model_type = getattr(self.config, "model_type", "")
        self.encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        self.padding = self.padding_choice if self.padding_choice != "auto" else (
            "right" if self.encoder_decoder else "bucket" if self.model_type in BUCKET_MODEL_TYPES else "left")
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is not None and self.padding in ("left", "right"):
            self.tokenizer.padding_side = self.padding
        self.chat_template = getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None)
        self.position_limit = learned_position_limit(self.model, self.config) if self.tokenizer is not None else None
        self.revision_id = resolve_revision(self.model_id, self.revision)

    def load_model(self, kw: dict) -> None:
        import inspect

        auto = pick_auto_class(self.config)
        try:
            model = auto.from_pretrained(self.model_id, dtype=self.dtype, **kw)
        except OSError as exc:
            raise WinnowError(f"recaption: cannot load weights of '{self.model_id}': {str(exc).splitlines()[0]}"
                              ) from None
        self.model = model.to(self.device).eval()
        self.forward_args = set(inspect.signature(self.model.forward).parameters)

    # -- prompts ---------------------------------------------------------------------------
    def render(self, prompt: str) -> str:
        """The model's full text input for a user prompt: its chat template when it has one."""
        if not self.chat_template:
            return prompt
        content = [{"type": "image"}] + ([{"type": "text", "text": prompt}] if prompt else [])
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def text_lengths(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(t) for t in texts]
        return [len(ids) for ids in self.tokenizer(texts)["input_ids"]]

    def prompt_positions(self, texts: list[str]) -> list[int]:
        """Decoder positions each prompt fills before the first new token (BLIP drops its trailing [SEP])."""
        drop = 1 if self.model_type == "blip" else 0
        return [n - drop for n in self.text_lengths(texts)]

    def too_long(self, texts: list[str]) -> list[str | None]:
        """Why a prompt cannot be generated from: it needs more positions than the model has embeddings for.

        Past the table, the embedding lookup fails mid-generate with "IndexError: index out of range in self".
        """
        limit = self.position_limit
        if limit is None:
            return [None] * len(texts)
        return [f"prompt too long for the model ({n} tokens; it takes {limit} positions)" if n > limit else None
                for n in self.prompt_positions(texts)]

    def chunks(self, texts: list[str], batch_size: int) -> list[list[int]]:
        """Row indices per generate call: sorted by prompt length (less padding), bucketed if required."""
        lengths = self.text_lengths(texts)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < batch_size and (self.padding != "bucket" or lengths[out[-1][0]] == lengths[i]):
                out[-1].append(i)
            else:
                out.append([i])
        return out

    # -- generation ------------------------------------------------------------------------
    def generate(self, images: list, texts: list[str], seeds: list[int], gen: GenSettings) -> list[str]:
        """One caption per (image, text); ``seeds`` are per-row sampling seeds (ignored when greedy)."""
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        from winnow.kernels.seeded_sampling import SeededGumbel

        text_arg = texts if any(texts) or self.chat_template else None  # BLIP: no prompt = unconditional
        inputs = self.processor(images=images, text=text_arg, padding=True, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if k != "token_type_ids" or k in self.forward_args}
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  if torch.is_tensor(v) else v for k, v in inputs.items()}
        max_new = gen.max_new_tokens
        if self.position_limit is not None:  # stop at the last position rather than index past it
            max_new = max(1, min(max_new, self.position_limit + 1 - max(self.prompt_positions(texts), default=0)))
        config = copy.deepcopy(self.model.generation_config)
        config.update(max_new_tokens=max_new, do_sample=False, num_beams=1, num_return_sequences=1,
                      temperature=None, top_k=None, top_p=None, repetition_penalty=gen.repetition_penalty)
        processors = LogitsProcessorList()
        if gen.do_sample:  # warp, then noise: argmax of noised scores is a sample (see SeededGumbel)
            if gen.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(gen.temperature))
            if gen.top_k > 0:
                processors.append(TopKLogitsWarper(gen.top_k))
            if gen.top_p < 1.0:
                processors.append(TopPLogitsWarper(gen.top_p))
            processors.append(SeededGumbel(seeds))
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config, logits_processor=processors)
        new = out[:, self._prompt_tokens(inputs.get("input_ids"), out):]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]

    def _prompt_tokens(self, input_ids, out) -> int:
        """How many leading output tokens echo the prompt (decoder-only models return it)."""
        import torch

        if input_ids is None or self.encoder_decoder:
            return 0
        n = input_ids.shape[1]
        if out.shape[1] >= n and torch.equal(out[:, :n].cpu(), input_ids.cpu()):
            return n
        if self.model_type == "blip":  # returns input_ids[:, :-1] with column 0 set to BOS
            return n - 1
        return 0

    def provenance(self) -> dict:
        import transformers

        return {"model": self.model_id, "revision": self.revision_id, "model_type": self.model_type,
                "auto_class": type(self.model).__name__, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "padding": self.padding,
                "transformers": transformers.__version__}


def learned_position_limit(model, config) -> int | None:
    """How many positions the text model has learned embeddings for; None when it has no such table.

    BLIP's text decoder (and BART-style decoders) look positions up in an ``nn.Embedding`` sized by
    ``max_position_embeddings``; rotary models (Qwen2-VL, LLaVA's Llama) have none and no hard limit.
    The vision tower's own position table is not the text's. A model whose language input has more than
    the prompt's tokens (BLIP-2's query tokens) is counted from the prompt only.
    """
    import torch

    limit = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    if model is None or not isinstance(limit, int):
        return None
    learned = any(isinstance(module, torch.nn.Embedding) and "position" in name.rsplit(".", 1)[-1]
                  and not re.search(r"vision|visual", name) for name, module in model.named_modules())
    return limit if learned else None


def pick_auto_class(config):
    """The first auto class (image-text-to-text first) that knows this config's architecture."""
    import transformers

    remote = set(getattr(config, "auto_map", None) or {})
    for name in AUTO_CLASS_NAMES:
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        if name in remote or type(config) in auto._model_mapping:
            return auto
    raise WinnowError(f"recaption: model type '{getattr(config, 'model_type', '?')}' is not a captioning / "
                      f"image-text-to-text model known to transformers {transformers.__version__}")


def resolve_revision(model: str, revision: str | None) -> str:
    """``git:<commit>`` for hub models, ``sha256:<16 hex>`` of config + weights for local directories."""
    if os.path.isdir(model):
        digest = hashlib.sha256()
        files = sorted(glob.glob(os.path.join(model, "*.safetensors")) + glob.glob(os.path.join(model, "*.bin")))
        for path in [os.path.join(model, "config.json")] + files:
            if os.path.exists(path):
                digest.update(os.path.basename(path).encode())
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        digest.update(block)
        return f"sha256:{digest.hexdigest()[:16]}"
    try:
        from transformers.utils import cached_file

        path = cached_file(model, "config.json", revision=revision)
    except OSError:
        path = None
    found = re.search(r"snapshots[/\\]([0-9a-f]{40})", path or "")
    return f"git:{found.group(1)}" if found else f"unresolved:{revision or 'main'}"
