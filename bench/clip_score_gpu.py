"""GPU end-to-end CLIP scoring from JPEG bytes: images/s for ViT-B-32 and ViT-L-14 on one GPU.

Ours: the clip_score engine on cuda (nvJPEG batched decode, grouped antialiased resize, fused
normalise, fp16 encoders, trimmed captions, cosine on GPU). Reference, same run: the plain open_clip
loop on the same GPU — DataLoader workers doing PIL decode + the model's transform + tokenizer, the
model in fp16. Random weights of the real architectures (no hub access needed; speed does not
depend on the values). Targets on one H100: ViT-B-32 >= 10,000 images/s, ViT-L-14 >= 1,500.

    python -m bench.clip_score_gpu [--images 8192] [--models ViT-B-32,ViT-L-14] [--batch 512]
    python -m bench.clip_score_gpu --dry-run     # same code path on CPU, tiny model: checks the script

Without CUDA (and without --dry-run) it prints that it was skipped and exits 0.
"""
from __future__ import annotations

import argparse
import os
import time

from bench.clip_score_cpu import load_pairs, reference


def run_one(arch: str, images, captions, device: str, batch: int, workers: int, rounds: int, reference_images: int):
    import torch

    from winnow.stages.filter.clip_engine import ClipEngine

    engine = ClipEngine({"score": f"open_clip:{arch}"}, device=device, model_batch=batch, threads=workers,
                        allow_random=True)
    engine.setup()
    m = engine.models["score"]
    engine.score(images[: 2 * batch], captions[: 2 * batch])  # warm-up: cuDNN/cuBLAS plans, nvJPEG handles
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ours = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        engine.score(images, captions)
        sync()
        ours = min(ours, time.perf_counter() - t0)
    n_ref = min(reference_images, len(images))
    ref = reference(m.model, m.preprocess, m.open_clip_tokenizer, images[:n_ref], captions[:n_ref], batch, workers,
                    device=device, dtype=m.input_dtype)
    engine.close()
    del engine, m
    if device == "cuda":
        torch.cuda.empty_cache()
    return len(images) / ours, n_ref / ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--models", default="ViT-B-32,ViT-L-14")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reference-images", type=int, default=4096)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few images: exercise the script")
    args = ap.parse_args(argv)

    import torch

    if args.dry_run:
        device, models_ = "cpu", ["winnow-tiny-224"]
        args.images, args.batch, args.rounds, args.reference_images = 64, 32, 1, 64
    elif not torch.cuda.is_available():
        print("clip_score_gpu: CUDA not available here: GPU benchmark skipped (not measured)")
        return 0
    else:
        device, models_ = "cuda", args.models.split(",")
    images, captions = load_pairs(args.images)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run)"
    print(f"CLIP scoring from JPEG bytes on {name}: {len(images)} COCO photos + captions, batch {args.batch}, "
          f"{args.workers} CPU workers, random weights, fp16 on GPU")
    for arch in models_:
        ours, ref = run_one(arch, images, captions, device, args.batch, args.workers, args.rounds,
                            args.reference_images)
        print(f"  {arch:<16} winnow engine {ours:9.0f} images/s | plain open_clip DataLoader loop {ref:8.0f} images/s"
              f" | {ours / ref:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
