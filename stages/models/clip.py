"""Model spec strings -> open_clip models, with their own preprocessing, weights checksum and errors.

One string fixes architecture + weights + preprocessing (DESIGN.md §6)::

    open_clip:ViT-B-32/laion2b_s34b_b79k          architecture / open_clip pretrained tag
    open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14     Hugging Face Hub repo holding an open_clip model
    open_clip:ViT-B-32@/models/b32.pt              architecture @ local checkpoint (open_clip or `winnow train-dfn`)
    open_clip:local-dir:/models/my-clip            directory with open_clip_config.json + weights
    open_clip:winnow-tiny@/tmp/tiny.pt             architectures shipped in stages/models/configs/ work too
    open_clip:ViT-B-32                             random weights: only where the caller allows it (training, bench)

Everything is built by ``open_clip.create_model_and_transforms``, the same path a plain open_clip
user takes. Two things are added: QuickGELU is forced whenever the weights were trained with it
(DFN and OpenAI weights: open_clip only *warns* when ``ViT-L-14/dfn2b`` is built with plain GELU,
and scores silently degrade), and failures become one WinnowError line.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winnow.kernels.clip_tokenizer import fast_tokenizer
from winnow.stages.errors import WinnowError

PREFIX = "open_clip:"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_lock = threading.Lock()
_registered = False
_sha_cache: dict[tuple, str] = {}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec; exactly one weights source (or none = random init)."""

    text: str
    arch: str | None = None  # open_clip architecture name (None for hf-hub / local-dir)
    tag: str | None = None
    checkpoint: str | None = None
    hub_id: str | None = None
    local_dir: str | None = None
    quick_gelu: bool = False  # force QuickGELU on top of the architecture config

    @property
    def kind(self) -> str:
        for kind, value in (("tag", self.tag), ("checkpoint", self.checkpoint), ("hf-hub", self.hub_id),
                            ("local-dir", self.local_dir)):
            if value:
                return kind
        return "random"

    def open_clip_args(self) -> tuple[str, str | None]:
        """(model_name, pretrained) as open_clip.create_model takes them."""
        if self.hub_id:
            return f"hf-hub:{self.hub_id}", None
        if self.local_dir:
            return f"local-dir:{self.local_dir}", None
        return self.arch, self.tag or self.checkpoint


def register_repo_configs() -> None:
    """Make the architectures in stages/models/configs/ (e.g. ``winnow-tiny``) known to open_clip, once."""
    global _registered
    with _lock:
        if not _registered:
            import open_clip

            open_clip.add_model_config(CONFIG_DIR)
            _registered = True


def parse_spec(spec: str, where: str = "model") -> ModelSpec:
    """Check a spec without loading anything (config validation): syntax, architecture, tag, files."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise WinnowError(f"{where}: model spec {spec!r} must start with '{PREFIX}', e.g. "
                          f"'open_clip:ViT-B-32/laion2b_s34b_b79k' or 'open_clip:ViT-B-32@/path/ckpt.pt'")
    body = spec[len(PREFIX):].strip()
    if body.startswith("hf-hub:"):
        hub_id = body[len("hf-hub:"):].strip("/")
        if hub_id.count("/") != 1 or not all(hub_id.split("/")):
            raise WinnowError(f"{where}: model spec {spec!r}: hf-hub id must be 'org/repo'")
        return ModelSpec(spec, hub_id=hub_id, quick_gelu=_hub_needs_quick_gelu(hub_id))
    if body.startswith("local-dir:"):
        path = body[len("local-dir:"):]
        if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
            raise WinnowError(f"{where}: model spec {spec!r}: {path}/open_clip_config.json not found")
        return ModelSpec(spec, local_dir=path, quick_gelu=_config_quick_gelu(f"local-dir:{path}"))
    arch, _, checkpoint = body.partition("@")
    arch, _, tag = arch.partition("/")
    if not arch:
        raise WinnowError(f"{where}: model spec {spec!r} names no architecture")
    import open_clip

    register_repo_configs()
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:5])][:6]
        raise WinnowError(f"{where}: unknown open_clip architecture '{arch}' in {spec!r}"
                          + (f"; similar: {', '.join(close)}" if close else ""))
    arch_quick = _config_quick_gelu(arch)
    if checkpoint:
        if tag:
            raise WinnowError(f"{where}: model spec {spec!r}: give a pretrained tag or a checkpoint, not both")
        if not os.path.isfile(checkpoint):
            raise WinnowError(f"{where}: checkpoint {checkpoint} (model spec {spec!r}) not found")
        return ModelSpec(spec, arch=arch, checkpoint=checkpoint, quick_gelu=arch_quick)
    if tag:
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise WinnowError(f"{where}: unknown pretrained tag '{tag}' for {arch} in {spec!r}; "
                              f"available: {', '.join(tags) or 'none'}")
        return ModelSpec(spec, arch=arch, tag=tag, quick_gelu=arch_quick or bool(cfg.get("quick_gelu")))
    return ModelSpec(spec, arch=arch, quick_gelu=arch_quick)


def _config_quick_gelu(name: str) -> bool:
    import open_clip

    try:
        cfg = open_clip.get_model_config(name)
    except Exception:  # unreadable local-dir config: reported when loading
        return False
    return bool((cfg or {}).get("quick_gelu", False))


def _hub_needs_quick_gelu(hub_id: str) -> bool:
    """open_clip's pretrained table knows which hub repos hold QuickGELU weights (DFN, OpenAI, MetaCLIP)."""
    import open_clip

    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if cfg.get("quick_gelu") and cfg.get("hf_hub", "").strip("/").split("/")[:2] == hub_id.split("/"):
            return True
    return False


@dataclass
class LoadedModel:
    """An open_clip model ready to encode, plus what produced it."""

    spec: ModelSpec
    model: Any
    preprocess: Any  # open_clip's own eval transform (PIL -> tensor): the reference path
    preprocess_cfg: dict
    tokenizer: Any
    device: Any
    input_dtype: Any
    weights_path: str | None = None
    sha256: str | None = None
    info: dict = field(default_factory=dict)

    def tokenize(self, captions: list[str]):
        return self.tokenizer(captions)

    @property
    def open_clip_tokenizer(self):
        """open_clip's own tokenizer, for reference loops (``tokenizer`` may be its faster twin, same ids)."""
        return getattr(self.tokenizer, "simple", self.tokenizer)

    def encode_image(self, pixels):
        return self.model.encode_image(pixels.to(self.device, self.input_dtype, non_blocking=True))

    def encode_text(self, tokens):
        """Text features; padding after the longest caption is trimmed when that cannot change the result."""
        return encode_text_trimmed(self.model, tokens.to(self.device, non_blocking=True))

    def provenance(self) -> dict:
        return {"model": self.spec.text, "weights": self.weights_path, "sha256": self.sha256,
                "quick_gelu": self.spec.quick_gelu, **self.info}


def load_model(spec: str | ModelSpec, device: str = "cpu", precision: str = "fp32",
               allow_random: bool = False, load_weights: bool = True) -> LoadedModel:
    """Build the model through open_clip.create_model_and_transforms; WinnowError on any failure."""
    import open_clip

    parsed = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    register_repo_configs()
    if parsed.kind == "random" and not allow_random and load_weights:
        raise WinnowError(f"model spec {parsed.text!r} has no weights; add a pretrained tag "
                          f"('{parsed.arch}/TAG'), a checkpoint ('{parsed.arch}@/path.pt') or use hf-hub:")
    name, pretrained = parsed.open_clip_args()
    if not load_weights and parsed.kind in ("tag", "checkpoint"):
        pretrained = None
    try:
        with _quiet_logs():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, precision=precision, device=device, load_weights=load_weights,
                force_quick_gelu=parsed.quick_gelu, require_pretrained=load_weights and parsed.kind != "random")
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/hub errors: one line for users
        raise _load_error(parsed, exc) from None
    model.eval()
    weights = weights_file(parsed) if load_weights else None
    tokenizer = fast_tokenizer(open_clip.get_tokenizer(name))  # same ids as open_clip's, faster
    cfg = dict(model.visual.preprocess_cfg)
    return LoadedModel(parsed, model, preprocess, cfg, tokenizer, model.logit_scale.device,
                       open_clip.get_input_dtype(precision) or _float32(), weights,
                       file_sha256(weights) if weights else None,
                       {"precision": precision, "image_size": cfg.get("size")})


@contextlib.contextmanager
def _quiet_logs():
    """open_clip and huggingface_hub log download retries and fallbacks on the root logger; our
    WinnowError says what went wrong in one line, so their messages are held back while loading."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _float32():
    import torch

    return torch.float32


def _load_error(spec: ModelSpec, exc: Exception) -> WinnowError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    first = " ".join(lines[:2])[:300]  # torch's load_state_dict puts the useful part on line 2
    if spec.kind in ("tag", "hf-hub") and weights_file(spec) is None:
        source = spec.hub_id or _tag_source(spec)
        return WinnowError(
            f"model {spec.text!r} is not available offline: its weights ({source}) are not in the local cache. "
            "Fetch them once with network access (or point HF_HOME at a cache that has them), "
            "or use a local checkpoint: open_clip:ARCH@/path/to/weights.pt")
    if spec.kind == "checkpoint":
        return WinnowError(f"checkpoint {spec.checkpoint} cannot be loaded as {spec.arch} (model {spec.text!r}): "
                           f"{first}")
    return WinnowError(f"model {spec.text!r} cannot be loaded: {first}")


def _tag_source(spec: ModelSpec) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    return "hf-hub " + cfg["hf_hub"].strip("/") if cfg.get("hf_hub") else cfg.get("url", "?")


def weights_file(spec: ModelSpec) -> str | None:
    """The local file holding the spec's weights, without downloading anything (None if not present)."""
    if spec.checkpoint:
        return spec.checkpoint
    if spec.local_dir:
        from open_clip.factory import _find_checkpoint_in_dir

        return _find_checkpoint_in_dir(Path(spec.local_dir))
    if spec.hub_id:
        return _hub_cached(spec.hub_id, "")
    if spec.tag:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
        if cfg.get("hf_hub"):
            repo, filename = os.path.split(cfg["hf_hub"])  # 'org/repo/' or 'org/repo/file', as open_clip splits
            found = _hub_cached(repo, filename)
            if found:
                return found
        if cfg.get("url"):
            path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
            return path if os.path.isfile(path) else None
    return None


def _hub_cached(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    names = [filename] if filename and filename not in _HF_WEIGHTS else list(_HF_WEIGHTS)
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def file_sha256(path: str) -> str:
    """sha256 of a weights file (what `sha256sum` prints); cached per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def describe(spec: str) -> dict:
    """Provenance of a spec without loading the model (e.g. on a driver that never ran setup())."""
    parsed = parse_spec(spec)
    path = weights_file(parsed)
    return {"model": spec, "weights": path, "sha256": file_sha256(path) if path else None,
            "quick_gelu": parsed.quick_gelu}


def encode_text_trimmed(model, tokens):
    """``model.encode_text`` without the padding columns after the longest caption of the batch.

    With a causal mask and the EOT-token pooling of open_clip's CLIP, positions after a caption's
    end token cannot influence its features, so dropping the all-padding tail changes nothing but
    the cost (most captions use 15-25 of 77 positions). Other text towers use the full call.
    """
    import open_clip
    import torch
    from open_clip.transformer import text_global_pool

    attn_mask = getattr(model, "attn_mask", None)
    if not isinstance(model, open_clip.CLIP) or model.text_pool_type != "argmax" or attn_mask is None:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
