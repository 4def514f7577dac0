"""Tiny open_clip models for tests: built from a config in stages/models/configs/, saved, loaded by spec.

Nothing here reaches a model hub. ``tiny_checkpoint`` returns the spec string that loads the saved
weights through the same path users take (``open_clip:ARCH@/path.pt``).
"""
from __future__ import annotations

import io
import os

import numpy as np


def tiny_checkpoint(path, arch: str = "winnow-tiny", seed: int = 0) -> str:
    import torch

    from winnow.stages.models import clip as models

    path = str(path)
    if not os.path.exists(path):
        torch.manual_seed(seed)
        loaded = models.load_model(f"open_clip:{arch}", allow_random=True)
        torch.save({"state_dict": loaded.model.state_dict()}, path)
    return f"open_clip:{arch}@{path}"


def reference_scores(spec: str, images: list[bytes], captions: list[str], exif: bool = False) -> np.ndarray:
    """The plain open_clip pipeline: PIL open -> the model's own preprocess -> encode -> cosine."""
    import torch
    from PIL import Image, ImageOps

    from winnow.stages.models import clip as models

    m = models.load_model(spec)
    with torch.no_grad():
        pics = []
        for data in images:
            im = Image.open(io.BytesIO(data))
            pics.append(m.preprocess(ImageOps.exif_transpose(im) if exif else im))
        img = m.model.encode_image(torch.stack(pics))
        txt = m.model.encode_text(m.open_clip_tokenizer(captions))
        img = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        return (img * txt).sum(-1).numpy()


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
