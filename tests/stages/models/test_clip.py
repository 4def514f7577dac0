"""Model specs: parsing, QuickGELU for DFN/OpenAI weights, checkpoints through the real open_clip path,
checksums, and one-line errors when a model cannot be had offline."""
import hashlib

import pytest
import torch

from tests.tiny_clip import tiny_checkpoint
from winnow.stages.errors import WinnowError
from winnow.stages.models import clip as models


@pytest.mark.parametrize("spec, kind, quick_gelu", [
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "tag", False),
    ("open_clip:ViT-L-14/dfn2b", "tag", True),  # open_clip itself would only warn and build GELU
    ("open_clip:ViT-L-14-quickgelu/dfn2b", "tag", True),
    ("open_clip:ViT-L-14/openai", "tag", True),
    ("open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14", "hf-hub", True),
    ("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf-hub", False),
    ("open_clip:winnow-tiny", "random", False),
    ("open_clip:winnow-tiny-quickgelu", "random", True),
])
def test_spec_kinds_and_quick_gelu(spec, kind, quick_gelu):
    parsed = models.parse_spec(spec)
    assert parsed.kind == kind and parsed.quick_gelu is quick_gelu


@pytest.mark.parametrize("spec, needle", [
    ("ViT-B-32/openai", "must start with 'open_clip:'"),
    ("open_clip:ViT-B-99/openai", "unknown open_clip architecture 'ViT-B-99'"),
    ("open_clip:ViT-B-32/no_such_tag", "unknown pretrained tag 'no_such_tag'"),
    ("open_clip:ViT-B-32@/no/such/file.pt", "/no/such/file.pt"),
    ("open_clip:hf-hub:justone", "org/repo"),
    ("open_clip:local-dir:/no/such/dir", "open_clip_config.json"),
])
def test_bad_specs_are_one_clear_error(spec, needle):
    with pytest.raises(WinnowError) as info:
        models.parse_spec(spec)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_quick_gelu_is_built_not_just_warned():
    def activation(loaded):
        return type(loaded.model.visual.transformer.resblocks[0].mlp.gelu).__name__

    assert activation(models.load_model("open_clip:ViT-B-32/openai", load_weights=False)) == "QuickGELU"
    assert activation(models.load_model("open_clip:ViT-B-32/laion2b_s34b_b79k", load_weights=False)) == "GELU"


def test_tiny_checkpoint_round_trip_with_checksum(tmp_path):
    torch.manual_seed(3)
    original = models.load_model("open_clip:winnow-tiny", allow_random=True)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": original.model.state_dict()}, path)
    loaded = models.load_model(f"open_clip:winnow-tiny@{path}")
    for (k, a), (_, b) in zip(original.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    prov = loaded.provenance()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["sha256"] == digest == models.describe(loaded.spec.text)["sha256"]
    assert prov["weights"] == str(path) and prov["quick_gelu"] is False
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original.model.encode_image(x), loaded.encode_image(x))
    assert loaded.preprocess_cfg["size"] in ((64, 64), 64, [64, 64])


def test_trimmed_text_encoding_equals_open_clip(tmp_path):
    loaded = models.load_model(tiny_checkpoint(tmp_path / "t.pt", arch="winnow-tiny-224"))
    tokens = loaded.tokenize(["a dog", "a photo of a red circle and a blue square on a white background", ""])
    assert tokens.shape[1] == 77
    with torch.no_grad():
        full = loaded.model.encode_text(tokens)
        trimmed = loaded.encode_text(tokens)
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    spec = tiny_checkpoint(tmp_path / "t.pt", arch="winnow-tiny")
    wrong = spec.replace("winnow-tiny@", "winnow-tiny-224@")
    with pytest.raises(WinnowError, match="cannot be loaded as winnow-tiny-224"):
        models.load_model(wrong)


def test_random_weights_need_explicit_permission():
    with pytest.raises(WinnowError, match="has no weights"):
        models.load_model("open_clip:winnow-tiny")


def test_model_not_available_offline_is_one_line():
    with pytest.raises(WinnowError) as info:
        models.load_model("open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14")
    assert "not available offline" in str(info.value) and "\n" not in str(info.value)


def test_cli_model_unavailable_offline(sample_dir, tmp_path, capsys):
    """The real CLI entry point, in-process (a subprocess would only add another open_clip import)."""
    from winnow.pipeline import cli

    code = cli.main(["stage", "clip_score", "--input", str(sample_dir / "shard-00000.parquet"), "--output",
                     str(tmp_path), "--set", "model=open_clip:ViT-B-32/laion2b_s34b_b79k", "--set", "device=cpu",
                     "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("winnow: error:"), err
    assert "not available offline" in lines[0] and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in lines[0]
