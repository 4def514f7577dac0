"""CPU throughput of ``image_classify`` vs transformers' own image-classification pipeline, on COCO photos.

Ours: the stage on a table of JPEG bytes (decode with kernels/image.py in a thread pool overlapped with
the model, the model's own image processor per image, batched forward), full decode and ``draft: true``.
Reference, same run, same model directory, same torch threads: ``pipeline("image-classification",
top_k=None)`` called one image at a time (the loop most users write) and on the whole list with
``batch_size`` (its own batching). Images go in as lazily opened PIL images, so both sides decode.
Weights are random (no hub here): speed does not depend on their values. ``--arch vit-b16`` scales the
repo's tiny ViT to ViT-B/16 at 224 px (86M parameters: the size of typical hub watermark/NSFW classifiers).

Also printed: how far ``draft: true`` moves the model's input (pixel_values, normalised units) from the
full decode on these photos, the fidelity price of its speed.

    python -m bench.classifier_cpu [--arch tiny|vit-b16] [--images 256] [--rounds 2]
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

from bench.clip_preprocess import COCO

VIT_B16 = ({"image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "initializer_range": 0.02},
           {"size": {"height": 224, "width": 224}})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("tiny", "vit-b16"), default="tiny")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="images per forward pass, both sides")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (both sides)")
    args = ap.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import torch
    from PIL import Image
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from winnow.stages.filter.classify import ImageClassify
    from winnow.stages.models.tiny_classifier import build_tiny_classifier

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    photos = [p.read_bytes() for p in sorted(COCO.glob("*.jpg"))]
    images = (photos * -(-args.images // len(photos)))[:args.images]
    table = pa.table({"uid": [str(i) for i in range(len(images))], "image": images})
    overrides, image_overrides = VIT_B16 if args.arch == "vit-b16" else ({}, {})
    model = build_tiny_classifier("tiny-vit", os.path.join(tempfile.gettempdir(), f"winnow-bench-clf-{args.arch}"),
                                  overrides=overrides, image_overrides=image_overrides)

    stages = {draft: ImageClassify(model=model, labels={"p": "watermark"}, device="cpu", draft=draft,
                                   model_batch=args.batch, cpus=os.cpu_count() or 1) for draft in (False, True)}
    for stage in stages.values():
        stage.ensure_setup()
        stage.process_batch(table.slice(0, 4))  # warm up
    pipe = pipeline("image-classification", model=model, top_k=None, device="cpu")
    pipe(Image.open(io.BytesIO(photos[0])))

    def ours(draft):
        t0 = time.perf_counter()
        stages[draft].process_batch(table)
        return time.perf_counter() - t0

    def loop():
        t0 = time.perf_counter()
        for data in images:
            pipe(Image.open(io.BytesIO(data)))
        return time.perf_counter() - t0

    def batched():
        t0 = time.perf_counter()
        pipe([Image.open(io.BytesIO(d)) for d in images], batch_size=args.batch)
        return time.perf_counter() - t0

    best: dict[str, float] = {}
    for r in range(args.rounds):  # interleaved, best of rounds: the machine may be shared
        for name, fn in (("stage", lambda: ours(False)), ("stage draft", lambda: ours(True)),
                         ("pipeline loop", loop), ("pipeline batch_size", batched)):
            best[name] = min(best.get(name, float("inf")), fn())
    n = len(images)
    params = sum(p.numel() for p in pipe.model.parameters())
    print(f"{args.arch} ({params / 1e6:.2f}M params), {n} COCO photos, {args.threads} torch threads, "
          f"batch {args.batch}, best of {args.rounds}")
    for name, sec in best.items():
        print(f"  {name:22s} {n / sec:8.1f} img/s   ({sec:.2f} s)")
    print(f"  stage / pipeline loop: {best['pipeline loop'] / best['stage']:.2f}x (draft: "
          f"{best['pipeline loop'] / best['stage draft']:.2f}x); stage / pipeline batch_size: "
          f"{best['pipeline batch_size'] / best['stage']:.2f}x (draft: "
          f"{best['pipeline batch_size'] / best['stage draft']:.2f}x)")

    full, draft = (np.stack([stages[d]._prepare_one(p).numpy() for p in photos]) for d in (False, True))
    diff = np.abs(full - draft)
    print(f"  draft vs full decode, pixel_values on {len(photos)} photos: mean |diff| {diff.mean():.4f}, "
          f"99th pct {np.quantile(diff, 0.99):.4f}, max {diff.max():.4f} (normalised units; range "
          f"{full.min():.1f}..{full.max():.1f})")


if __name__ == "__main__":
    main()
