"""Tiny random-weight VLMs: built offline from repo configs, reproducible, loadable by the auto classes."""
import json
import os

import pytest

from winnow.stages.models.tiny_vlm import ARCHITECTURES, CONFIG_ROOT, build_tiny_vlm


def test_configs_cover_an_encoder_decoder_and_decoder_only_models():
    archs = {a: json.load(open(os.path.join(CONFIG_ROOT, a, "config.json")))["architectures"][0]
             for a in ARCHITECTURES}
    assert archs["blip"] == "BlipForConditionalGeneration"
    assert {"Qwen2VLForConditionalGeneration", "LlavaForConditionalGeneration"} <= set(archs.values())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_build_is_reproducible_and_loads_back(arch, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    a = build_tiny_vlm(arch, str(tmp_path / "a"), seed=0)
    b = build_tiny_vlm(arch, str(tmp_path / "b"), seed=0)
    c = build_tiny_vlm(arch, str(tmp_path / "c"), seed=1)
    read = lambda d: open(os.path.join(d, "model.safetensors"), "rb").read()  # noqa: E731
    assert read(a) == read(b) != read(c)
    model = AutoModelForImageTextToText.from_pretrained(a)
    processor = AutoProcessor.from_pretrained(a)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny: CI-sized
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)
    assert build_tiny_vlm(arch, a, seed=0) == a  # a finished build is reused


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        build_tiny_vlm("gpt2", "/nonexistent")
