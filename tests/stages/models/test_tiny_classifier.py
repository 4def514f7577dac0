"""Tiny random-weight image classifiers: built offline from repo configs, reproducible, loadable by the auto classes."""
import os

import pytest

from winnow.stages.models.tiny_classifier import build_tiny_classifier


def test_build_is_reproducible_and_loads_back(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    a = build_tiny_classifier("tiny-vit", str(tmp_path / "a"), seed=0)
    b = build_tiny_classifier("tiny-vit", str(tmp_path / "b"), seed=0)
    c = build_tiny_classifier("tiny-vit", str(tmp_path / "c"), seed=1)
    read = lambda d: open(os.path.join(d, "model.safetensors"), "rb").read()  # noqa: E731
    assert read(a) == read(b) != read(c)
    model = AutoModelForImageClassification.from_pretrained(a)
    processor = AutoImageProcessor.from_pretrained(a)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny: CI-sized
    assert model.config.id2label == {0: "clean", 1: "watermark"}
    assert processor.size["height"] == model.config.image_size == 64
    assert build_tiny_classifier("tiny-vit", a, seed=0) == a  # a finished build is reused
    d = build_tiny_classifier("tiny-vit", str(tmp_path / "d"), overrides={"id2label": {"0": "sfw", "1": "nsfw"}})
    assert AutoModelForImageClassification.from_pretrained(d).config.label2id == {"sfw": 0, "nsfw": 1}


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown tiny classifier"):
        build_tiny_classifier("resnet", "/nonexistent")
