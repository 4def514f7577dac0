"""`winnow train-dfn`: train or fine-tune a filtering CLIP on a small, clean image-text set.

This is the point of Data Filtering Networks (Fang et al., 2023): the filter is a CLIP trained on
high-quality pairs, and its image-text cosine then ranks a large noisy pool. Training is plain
open_clip: the model from a spec (``open_clip:ARCH`` from scratch, ``ARCH/TAG``, ``hf-hub:...`` or a
checkpoint to fine-tune), open_clip's ``ClipLoss``, AdamW with warmup + cosine decay, the learned
temperature clamped at 100 as in open_clip. Images are decoded once, at the model's resolution
(kernels/image.py, the same preprocessing the scoring stage uses), and held in memory as uint8.

The result loads back through the normal spec path: a file (``--output x.pt``) is
``open_clip:ARCH@x.pt``; a directory (``--output dir/``) is ``open_clip:local-dir:dir`` (needed
when the base model has no architecture name, i.e. hf-hub/local-dir bases).
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from winnow.stages.errors import WinnowError

FILE_SUFFIXES = (".pt", ".pth", ".bin")


def main(args) -> int:
    result = train(args.data, args.model, args.output, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed)
    print(f"wrote {result['output']}: {result['rows']} pairs, {result['steps']} steps, "
          f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}, {result['seconds']:.1f}s")
    print(f"use it as: {result['spec']}")
    return 0


def load_pairs(path: str) -> tuple[list[bytes], list[str]]:
    """Image bytes and captions of every row with both, from any input layout winnow reads."""
    import pyarrow.compute as pc

    from winnow.pipeline.inputs import list_shards, read_shard

    images, captions = [], []
    for shard in list_shards(path):
        table = read_shard(shard)
        for col in ("image", "caption"):
            if col not in table.column_names:
                raise WinnowError(f"--data {shard.path}: no '{col}' column (columns: {', '.join(table.column_names)})")
        ok = pc.and_(pc.fill_null(pc.greater(pc.binary_length(table["image"]), 0), False),
                     pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["caption"])), 0), False))
        table = table.filter(ok)
        images.extend(table["image"].to_pylist())
        captions.extend(table["caption"].to_pylist())
    if not images:
        raise WinnowError(f"--data {path}: no rows with both an image and a caption")
    return images, captions


def train(data: str, model: str, output: str, steps: int = 200, batch_size: int = 64, lr: float = 5e-4,
          seed: int = 0, device: str = "auto", warmup: float = 0.1, weight_decay: float = 0.1,
          log=None) -> dict:
    import open_clip
    import torch

    from winnow.kernels.image import PreprocessSpec, normalize_batch
    from winnow.stages.models import clip as models

    if steps < 1 or batch_size < 2 or lr <= 0:
        raise WinnowError("train-dfn: --steps must be >= 1, --batch-size >= 2 and --lr > 0")
    spec = models.parse_spec(model, where="--model")
    target = _output_spec(spec, output)  # fail before training, not after
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    loaded = models.load_model(spec, device=str(dev), allow_random=True)
    net = loaded.model
    pp = PreprocessSpec.from_open_clip(loaded.preprocess_cfg)
    images, captions = load_pairs(data)
    t0 = time.perf_counter()
    pixels, keep = _decode_all(images, pp, loaded)
    if len(keep) < 2:
        raise WinnowError(f"--data {data}: fewer than 2 decodable images")
    tokens = loaded.tokenize([captions[i] for i in keep])
    n = len(keep)
    batch = min(batch_size, n)

    decay = [p for name, p in net.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in net.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    loss_fn = open_clip.ClipLoss()
    net.train()
    losses, order, pos = [], rng.permutation(n), 0
    for _ in range(steps):
        if pos + batch > n:  # epochs without replacement, reshuffled
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos:pos + batch])
        pos += batch
        x = normalize_batch(pixels[idx], pp).to(dev) if pixels.dtype == torch.uint8 else pixels[idx].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            img = torch.nn.functional.normalize(net.encode_image(x), dim=-1)
            txt = torch.nn.functional.normalize(models.encode_text_trimmed(net, tokens[idx].to(dev)), dim=-1)
            loss = loss_fn(img.float(), txt.float(), net.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if log and (len(losses) % 50 == 0 or len(losses) == steps):
            log(f"step {len(losses)}/{steps} loss {np.mean(losses[-50:]):.3f}")
    net.eval()
    meta = {"base": spec.text, "steps": steps, "batch_size": batch, "lr": lr, "seed": seed, "rows": n,
            "data": os.path.abspath(data), "final_loss": losses[-1]}
    _save(net, spec, loaded, target, output, meta)
    return {"output": output, "spec": target, "rows": n, "steps": steps, "loss_first": losses[0],
            "loss_last": float(np.mean(losses[-10:])), "seconds": time.perf_counter() - t0}


def _decode_all(images: list[bytes], pp, loaded):
    """All images at the model's resolution: uint8 (N, H, W, 3) when our kernel reproduces the transform."""
    import torch

    from winnow.kernels.image import DecodeError, decode_rgb, preprocess_cpu

    def one(data):
        try:
            if pp.exact:
                return preprocess_cpu(data, [pp])[0]
            return loaded.preprocess(decode_rgb(data, draft=False)[0])
        except DecodeError:
            return None

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        out = list(pool.map(one, images))
    keep = [i for i, x in enumerate(out) if x is not None]
    if not keep:
        return torch.zeros(0), keep
    if pp.exact:
        return torch.from_numpy(np.stack([out[i] for i in keep])), keep
    return torch.stack([out[i] for i in keep]), keep


def _output_spec(spec, output: str) -> str:
    """The spec the trained weights will load under; WinnowError if a single file cannot express it."""
    import open_clip

    if not output.endswith(FILE_SUFFIXES):
        return f"open_clip:local-dir:{output.rstrip('/') or output}"
    if spec.arch is None:
        raise WinnowError(f"--output {output}: a {spec.kind} base model has no architecture name to pair with a "
                          "single checkpoint file; give a directory as --output")
    arch = spec.arch
    if spec.quick_gelu and not (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        arch = f"{arch}-quickgelu"  # the weights were trained with QuickGELU: so is the model that loads them
        if arch not in open_clip.list_models():
            raise WinnowError(f"--output {output}: no QuickGELU variant of {spec.arch}; give a directory as --output")
    return f"open_clip:{arch}@{output}"


def _save(net, spec, loaded, target: str, output: str, meta: dict) -> None:
    import open_clip
    import torch

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if target.startswith("open_clip:local-dir:"):
        name, _ = spec.open_clip_args()
        cfg = open_clip.get_model_config(name)
        cfg["quick_gelu"] = bool(cfg.get("quick_gelu")) or spec.quick_gelu
        pp = {k: v for k, v in loaded.preprocess_cfg.items() if k != "size"}
        os.makedirs(output, exist_ok=True)
        _atomic(lambda p: torch.save(state, p), os.path.join(output, "open_clip_pytorch_model.bin"))
        _atomic(lambda p: _write_json({"model_cfg": cfg, "preprocess_cfg": pp, "winnow": meta}, p),
                os.path.join(output, "open_clip_config.json"))
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        _atomic(lambda p: torch.save({"state_dict": state, "winnow": meta}, p), output)


def _atomic(write, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_json(obj, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=list)
