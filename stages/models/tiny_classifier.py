"""Tiny RANDOM-WEIGHT image classifiers built offline from configs in the repo.

Nothing here detects a watermark: the weights are random, so the probabilities are noise (spread
over [0, 1] by a large ``initializer_range``, so that tests comparing two paths compare numbers that
differ from image to image). The models exist so tests, the demo and the benchmarks run the real
loading path (``AutoImageProcessor`` / ``AutoModelForImageClassification.from_pretrained`` on a local
directory, exactly what a hub id resolves to) without any model hub. ``configs/classifier/<arch>/``
holds the model config and the image-processor config.

    python -m winnow.stages.models.tiny_classifier tiny-vit /tmp/tiny-vit
"""
from __future__ import annotations

import json
import os
import sys

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "classifier")
ARCHITECTURES = ("tiny-vit",)
MARKER = "TINY_RANDOM_MODEL.txt"


def _read(arch: str, name: str) -> dict:
    with open(os.path.join(CONFIG_ROOT, arch, name), encoding="utf-8") as f:
        return json.load(f)


def build_tiny_classifier(arch: str, out_dir: str, seed: int = 0, overrides: dict | None = None,
                          image_overrides: dict | None = None) -> str:
    """Build ``arch`` with random weights (seeded), save model + image processor to ``out_dir``; returns it.

    ``overrides`` updates the model config (e.g. another ``id2label`` or ``problem_type``; the benchmark
    scales the same architecture to ViT-B/16 this way), ``image_overrides`` the image-processor config. A
    directory that already holds a finished build of the same arch, seed and overrides is reused.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny classifier '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    marker = os.path.join(out_dir, MARKER)
    extra = json.dumps([overrides or {}, image_overrides or {}], sort_keys=True)
    stamp = (f"random-weight {arch} (seed {seed}, overrides {extra}) built by "
             "stages/models/tiny_classifier.py: NOT a real classifier\n")
    if os.path.exists(marker) and open(marker, encoding="utf-8").read() == stamp:
        return out_dir
    cfg = {**_read(arch, "config.json"), **(overrides or {})}
    if "id2label" in (overrides or {}):
        cfg["label2id"] = {name: int(i) for i, name in cfg["id2label"].items()}
    config = AutoConfig.for_model(**cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageClassification.from_config(config)
    pp = {**_read(arch, "preprocessor_config.json"), **(image_overrides or {})}
    processor = getattr(transformers, pp.pop("image_processor_type"))(**pp)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(stamp)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: python -m winnow.stages.models.tiny_classifier {{{'|'.join(ARCHITECTURES)}}} OUT_DIR [SEED]")
    print(build_tiny_classifier(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0))
