"""Embedding heads: small published (or `winnow train-head`) models over CLIP image embeddings.

A head spec names an architecture and a weights file; each head knows which embedding model it was
trained on (a model spec and the embedding dimension), and a head fed anything else is refused::

    head:aesthetic-v1@/models/sa_0_4_vit_l_14_linear.pth      LAION-AI/aesthetic-predictor: Linear(768, 1)
    head:aesthetic-v2@/models/sac+logos+ava1-l14-linearMSE.pth improved-aesthetic-predictor MLP (5 Linear)
    head:nsfw-laion@/models/nsfw_l14.pt                       CLIP-based-NSFW-Detector, converted from Keras
    head:winnow@/models/head.pt                               written by `winnow train-head`

The published heads were trained on OpenAI CLIP ViT-L/14 image embeddings (``open_clip:ViT-L-14/openai``
and its aliases below). ``;model=SPEC`` after the path says the weights belong to another embedding
model (the same weights under another spec, or a test's tiny model): ``head:aesthetic-v2@/p.pth;model=...``.

Every head is fed the same numbers: the image embedding rounded to float16 (what clip_score's
``embeddings_dir`` stores), back to float32 and L2-normalised (``models/embeddings.normalize``), run
in float32 on the CPU. So a head inside clip_score and the ``score_embeddings`` stage over the cached
side dataset see bit-identical inputs. See docs/heads.md for the architectures and what was verified.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from winnow.stages.errors import WinnowError
from winnow.stages.models.embeddings import normalize

PREFIX = "head:"
OPENAI_L14 = "open_clip:ViT-L-14/openai"
# spec strings that load the same OpenAI ViT-L/14 weights (open_clip forces QuickGELU for the openai tag)
MODEL_ALIASES = {OPENAI_L14: {OPENAI_L14, "open_clip:ViT-L-14-quickgelu/openai",
                              "open_clip:hf-hub:timm/vit_large_patch14_clip_224.openai"}}
FORMAT = "winnow-head/1"
KINDS = ("aesthetic-v1", "aesthetic-v2", "nsfw-laion", "winnow")
_EPSILON = 1e-7  # keras.backend.epsilon(): Keras' Normalization divides by max(sqrt(variance), epsilon)


@dataclass(frozen=True)
class HeadSpec:
    text: str
    kind: str
    path: str
    model: str | None = None  # ;model= override of the embedding model


def parse_head(spec: str, where: str = "head") -> HeadSpec:
    """Check a head spec without loading it: prefix, kind, file."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX) or "@" not in spec:
        raise WinnowError(f"{where}: head spec {spec!r} must look like 'head:KIND@/path' with KIND one of "
                          f"{', '.join(KINDS)}")
    body, _, model = spec[len(PREFIX):].partition(";model=")
    kind, _, path = body.partition("@")
    if kind not in KINDS:
        raise WinnowError(f"{where}: unknown head kind '{kind}' in {spec!r}; known: {', '.join(KINDS)}")
    if not path or not os.path.isfile(path):
        raise WinnowError(f"{where}: head weights {path or '(none)'} (head spec {spec!r}) not found")
    return HeadSpec(spec, kind, path, model.strip() or None)


def same_model(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a == b or any(a in names and b in names for names in MODEL_ALIASES.values())


@dataclass
class Head:
    """A loaded head: a float32 torch module on the CPU plus what it expects."""

    spec: HeadSpec
    module: object
    model: str  # embedding model spec the weights were trained on
    dim: int
    output: str  # "score" (regression) or "probability"
    info: dict = field(default_factory=dict)

    def check(self, model: str | None, dim: int | None, where: str) -> None:
        """One WinnowError naming both sides when the embeddings are not the head's."""
        if not same_model(self.model, model):
            raise WinnowError(f"{where}: head {self.spec.text!r} expects image embeddings of {self.model} "
                              f"({self.dim}-d), but the embeddings are of {model or 'an unrecorded model'}"
                              f"{f' ({dim}-d)' if dim else ''}; name the head's model with ';model=SPEC' "
                              "only if the weights really are that model's")
        if dim is not None and dim != self.dim:
            raise WinnowError(f"{where}: head {self.spec.text!r} expects {self.dim}-d image embeddings of "
                              f"{self.model}, but the embeddings of {model} are {dim}-d")

    def __call__(self, emb16: np.ndarray) -> np.ndarray:
        """(n, dim) float16 (or float32) image embeddings -> (n,) float32 head outputs."""
        import torch

        x = normalize(np.asarray(emb16).astype(np.float32))
        if x.shape[1] != self.dim:
            raise WinnowError(f"head {self.spec.text!r}: got {x.shape[1]}-d embeddings, expects {self.dim}-d")
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).reshape(-1).float().numpy()

    def provenance(self) -> dict:
        from winnow.stages.models.clip import file_sha256

        return {"head": self.spec.text, "kind": self.spec.kind, "model": self.model, "dim": self.dim,
                "output": self.output, "sha256": file_sha256(self.spec.path), **self.info}


# ---------------------------------------------------------------------------------------- architectures
def aesthetic_v2(dim: int = 768):
    """christophschuhmann/improved-aesthetic-predictor ``MLP.layers`` (no activations; dropout is eval no-op)."""
    from torch import nn

    return nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def _modules():
    """The nn.Module classes, built on first use (torch is imported only where heads run)."""
    import torch
    from torch import nn

    class AestheticV2(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.layers = aesthetic_v2(dim)

        def forward(self, x):
            return self.layers(x)

    class NsfwLaion(nn.Module):
        """Keras ``Normalization`` (mean, variance), Dense 64/512/256 relu, Dense 1 sigmoid."""

        def __init__(self, dim):
            super().__init__()
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("variance", torch.ones(dim))
            self.layers = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 512), nn.ReLU(),
                                        nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 1), nn.Sigmoid())

        def forward(self, x):
            return self.layers((x - self.mean) / torch.clamp(torch.sqrt(self.variance), min=_EPSILON))

    class WinnowHead(nn.Module):
        """`winnow train-head`: linear or one-hidden-layer MLP; logistic (binary) or de-standardised regression."""

        def __init__(self, dim, hidden=0, task="binary", target_mean=0.0, target_std=1.0):
            super().__init__()
            self.layers = (nn.Sequential(nn.Linear(dim, 1)) if not hidden else
                           nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)))
            self.task, self.target_mean, self.target_std = task, float(target_mean), float(target_std)

        def logits(self, x):
            return self.layers(x).reshape(-1)

        def forward(self, x):
            z = self.logits(x)
            return torch.sigmoid(z) if self.task == "binary" else z * self.target_std + self.target_mean

    return AestheticV2, NsfwLaion, WinnowHead


def build(kind: str, dim: int, **kw):
    """The architecture of a head kind, random weights (tests and train-head build through this)."""
    from torch import nn

    aes2, nsfw, winnow = _modules()
    if kind == "aesthetic-v1":
        return nn.Linear(dim, 1)
    if kind == "aesthetic-v2":
        return aes2(dim)
    if kind == "nsfw-laion":
        return nsfw(dim)
    if kind == "winnow":
        return winnow(dim, **kw)
    raise WinnowError(f"unknown head kind '{kind}'")


# ---------------------------------------------------------------------------------------- loading
_FIRST = {"aesthetic-v1": "weight", "aesthetic-v2": "layers.0.weight", "nsfw-laion": "layers.0.weight",
          "winnow": "layers.0.weight"}


def load_head(spec: str | HeadSpec, where: str = "head") -> Head:
    import torch

    parsed = spec if isinstance(spec, HeadSpec) else parse_head(spec, where)
    try:
        obj = torch.load(parsed.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors: one line
        raise WinnowError(f"{where}: head weights {parsed.path} cannot be read ({str(exc).splitlines()[0][:200]})"
                          ) from None
    meta: dict = {}
    if parsed.kind == "winnow":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise WinnowError(f"{where}: {parsed.path} is not a `winnow train-head` file (no format {FORMAT!r})")
        meta, state = obj, obj["state_dict"]
    else:
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or _FIRST[parsed.kind] not in state:
        keys = ", ".join(list(state)[:6]) if isinstance(state, dict) else type(state).__name__
        raise WinnowError(f"{where}: {parsed.path} does not hold {parsed.kind} weights: expected key "
                          f"'{_FIRST[parsed.kind]}', found {keys or 'nothing'}")
    dim = int(state[_FIRST[parsed.kind]].shape[1])
    kw = {}
    if parsed.kind == "winnow":
        kw = {"hidden": int(meta.get("hidden", 0)), "task": meta.get("task", "binary"),
              "target_mean": meta.get("target_mean", 0.0), "target_std": meta.get("target_std", 1.0)}
        if int(meta.get("dim", dim)) != dim:
            raise WinnowError(f"{where}: {parsed.path} records dim {meta.get('dim')} but its weights take {dim}")
    module = build(parsed.kind, dim, **kw)
    want = module.state_dict()
    bad = [f"{k}: file {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if bad or missing or extra:
        detail = "; ".join(bad[:3] + ([f"missing {', '.join(missing[:4])}"] if missing else [])
                           + ([f"unexpected {', '.join(extra[:4])}"] if extra else []))
        raise WinnowError(f"{where}: {parsed.path} does not match the {parsed.kind} architecture ({dim}-d input): "
                          f"{detail}")
    module.load_state_dict({k: v.float() for k, v in state.items()})
    module.float().eval()
    model = parsed.model or (meta.get("model") if parsed.kind == "winnow" else OPENAI_L14)
    if not model:
        raise WinnowError(f"{where}: {parsed.path} records no embedding model")
    output = "probability" if parsed.kind == "nsfw-laion" or kw.get("task") == "binary" else "score"
    info = {k: meta[k] for k in ("task", "metrics") if k in meta}
    return Head(parsed, module, model, dim, output, info)
