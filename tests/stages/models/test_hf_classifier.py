"""Hugging Face classifier sources: hub ids and directories parsed without loading, labels checked against
the model's own names, revisions recorded (local directories by a hash of what they hold), activations
chosen by the image-classification pipeline's rules."""
import types

import pytest

from winnow.stages.errors import WinnowError
from winnow.stages.models import hf_classifier as HF
from winnow.stages.models.tiny_classifier import build_tiny_classifier


@pytest.mark.parametrize("model, revision, expected", [
    ("org/name", "", ("org/name", None)),
    ("org/name@v1.2", "", ("org/name", "v1.2")),
    ("org/name", "abc123", ("org/name", "abc123")),
    ("org/name@abc123", "abc123", ("org/name", "abc123")),
    ("legacy-name", "", ("legacy-name", None)),
])
def test_hub_ids_parse_without_loading(model, revision, expected):
    src = HF.parse_source(model, revision)
    assert (src.model, src.revision, src.local) == (*expected, False)


@pytest.mark.parametrize("model", ["org/name@", "a/b/c", "org/na me", "./missing-dir", ""])
def test_bad_sources_are_one_line(model):
    with pytest.raises(WinnowError) as err:
        HF.parse_source(model, "", "stage 'x'")
    assert str(err.value).startswith("stage 'x': ") and "\n" not in str(err.value)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(WinnowError, match=r"has no config.json \(save the model there with save_pretrained\)"):
        HF.parse_source(str(tmp_path))


def test_local_revision_follows_the_weights(tmp_path):
    a = build_tiny_classifier("tiny-vit", str(tmp_path / "m"), seed=0)
    src = HF.parse_source(a)
    first = HF.resolve_revision(src)
    assert src.local and first.startswith("local:sha256:") and len(first) == len("local:sha256:") + 64
    assert first == HF.resolve_revision(HF.parse_source(str(tmp_path / "m" / ".")))
    assert HF.local_id2label(src) == {0: "clean", 1: "watermark"}
    build_tiny_classifier("tiny-vit", a, seed=1)  # same path, new weights
    assert HF.resolve_revision(HF.parse_source(a)) != first


def test_an_uncached_hub_id_is_unresolved_not_fetched():
    src = HF.parse_source("winnow-test/never-downloaded@v3")
    assert HF.resolve_revision(src) == "unresolved:v3" and HF.local_id2label(src) is None


def test_label_indices_list_the_models_labels():
    assert HF.label_indices({"p": "nsfw"}, {0: "sfw", 1: "nsfw"}, "m", "w") == {"p": 1}
    with pytest.raises(WinnowError, match=r"^w: label 'NSFW' \(column 'p'\) is not a label of m; "
                                          r"its labels: sfw, nsfw$"):
        HF.label_indices({"p": "NSFW"}, {1: "nsfw", 0: "sfw"}, "m", "w")


@pytest.mark.parametrize("problem, n, expected", [
    (None, 2, "softmax"), ("single_label_classification", 2, "softmax"), ("multi_label_classification", 3, "sigmoid"),
    (None, 1, "sigmoid"), ("regression", 1, "none"),
])
def test_activation_follows_the_pipeline_rules(problem, n, expected):
    assert HF.activation(types.SimpleNamespace(problem_type=problem, num_labels=n)) == expected
