"""Cosine similarity of paired embeddings: the CLIP score of row i is <img_i, txt_i> after L2 normalisation.

Computed in float32 whatever the encoder's dtype (fp16/bf16 features would lose ~3 digits in the
sum), in one pass: normalise both sides, then a row-wise dot (``torch.linalg.vecdot``). The numpy
function is the reference the torch path is tested against, on CPU and on GPU.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12  # as torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN


def normalize(x):
    """Row-wise L2 normalisation in float32 (torch tensor in, torch tensor out, same device)."""
    import torch

    x = x.to(torch.float32)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)


def paired_cosine(image_features, text_features):
    """(N,) float32 scores and the two normalised (N, D) float32 matrices, on the inputs' device."""
    import torch

    a, b = normalize(image_features), normalize(text_features)
    return torch.linalg.vecdot(a, b), a, b


def paired_cosine_reference(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
    """Plain numpy float64 version of ``paired_cosine`` (scores only)."""
    a = np.asarray(image_features, dtype=np.float64)
    b = np.asarray(text_features, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), EPS)
    return (a * b).sum(-1).astype(np.float32)
