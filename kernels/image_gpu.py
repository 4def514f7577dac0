"""The GPU half of CLIP preprocessing: nvJPEG batched decode and a batched resize + centre crop.

``resize_crop`` runs on any device, so its CPU run is the reference the GPU tests compare against
(tests/kernels/test_image.py); normalisation is ``kernels.image.normalize_batch`` on the device.
"""
from __future__ import annotations

import warnings

from winnow.kernels.image import PreprocessSpec, resize_plan


def decode_jpeg_gpu(datas: list[bytes], device) -> list:
    """nvJPEG batched decode to (3, H, W) uint8 on ``device``; None where an image fails (CPU retries it)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 flags its image decoders as deprecated; torch warns that the bytes are
        # read-only, which is fine: the decoder only reads them (and a copy costs ~100 us per image)
        warnings.simplefilter("ignore")
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
        try:
            out = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # one bad image fails the whole batch: find it
            out = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except torch.cuda.OutOfMemoryError:
                    raise
                except RuntimeError:
                    out.append(None)
    return [None if x is None else (x.expand(3, -1, -1) if x.shape[0] == 1 else x) for x in out]


def resize_crop(images: list, spec: PreprocessSpec, max_elems: int = 1 << 27):
    """Upright (3, H, W) uint8 tensors -> (N, 3, h, w) float32 in 0..255, rounded like PIL's uint8 output.

    Same-size images are resized together (one kernel launch per size group, bounded by ``max_elems``).
    Antialiased bicubic in torch uses PIL's kernel (a = -0.5), so this matches the CPU path to ~1 level.
    """
    import torch
    import torch.nn.functional as F

    th, tw = spec.size
    out = torch.empty((len(images), 3, th, tw), dtype=torch.float32, device=images[0].device if images else "cpu")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(i)
    mode = "bicubic" if spec.interpolation == "bicubic" else "bilinear"
    for (h, w), idx in groups.items():
        (rw, rh), (left, top) = resize_plan(w, h, spec)
        per = max(1, max_elems // (3 * h * w))
        for k in range(0, len(idx), per):
            part = idx[k:k + per]
            x = torch.stack([images[i] for i in part]).to(torch.float32)
            if (rh, rw) != (h, w):
                x = F.interpolate(x, size=(rh, rw), mode=mode, antialias=True, align_corners=False)
            out[part] = x[:, :, top:top + th, left:left + tw].clamp_(0, 255).round_()
    return out
