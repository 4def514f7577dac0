"""`winnow train-dfn`: a tiny CLIP trained on clean pairs becomes a filter that spots swapped captions."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from winnow.pipeline import cli
from winnow.pipeline.tools.sample import generate
from winnow.pipeline.tools.train_dfn import _output_spec
from winnow.stages.filter.clip_score import Dfn
from winnow.stages.models import clip as models


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trained_filter_ranks_matched_pairs_above_swapped_ones(tmp_path, capsys):
    samples, truth = generate(700, seed=21, mismatch=0.3)
    train, held_out = slice(0, 450), slice(450, 700)
    hq = pc.and_(truth["caption_matches"], pc.is_null(truth["problem"])).to_numpy(zero_copy_only=False)
    hq[train.stop:] = False  # the clean training set: matched, problem-free rows of the training split
    pq.write_table(samples.filter(pa.array(hq)), tmp_path / "hq.parquet")
    code, out, err = run_cli(capsys, "train-dfn", "--data", tmp_path / "hq.parquet", "--model", "open_clip:winnow-tiny",
                             "--output", tmp_path / "dfn.pt", "--steps", 150, "--batch-size", 64, "--lr", 3e-3,
                             "--seed", 0)
    assert code == 0, err
    spec = out.strip().splitlines()[-1].removeprefix("use it as: ")
    assert spec == f"open_clip:winnow-tiny@{tmp_path / 'dfn.pt'}"

    stage = Dfn(model=spec, device="cpu")  # the checkpoint is a dfn model spec like any other
    stage.ensure_setup()
    rows = samples.slice(held_out.start, held_out.stop - held_out.start)
    scores = stage.prepare(rows)["dfn_score"].to_numpy(zero_copy_only=False)
    t = truth.slice(held_out.start, held_out.stop - held_out.start)
    clean = np.array([p is None for p in t["problem"].to_pylist()]) & ~np.isnan(scores)
    matched = np.array(t["caption_matches"].to_pylist())
    positive, negative = scores[clean & matched], scores[clean & ~matched]
    assert len(positive) > 80 and len(negative) > 40
    assert roc_auc(positive, negative) >= 0.9


def _hq(tmp_path, rows=40):
    samples, truth = generate(rows, seed=3, fractions={"corrupt_image": 0.0, "zero_bytes": 0.0})
    path = tmp_path / "hq.parquet"
    pq.write_table(samples, path)
    return path


def test_file_and_directory_outputs_load_back_identically(tmp_path, capsys):
    data = _hq(tmp_path)
    common = ["--data", data, "--model", "open_clip:winnow-tiny", "--steps", 3, "--batch-size", 8]
    assert run_cli(capsys, "train-dfn", *common, "--output", tmp_path / "a.pt")[0] == 0
    code, out, _ = run_cli(capsys, "train-dfn", *common, "--output", tmp_path / "dirmodel")
    assert code == 0 and f"open_clip:local-dir:{tmp_path / 'dirmodel'}" in out
    a = models.load_model(f"open_clip:winnow-tiny@{tmp_path / 'a.pt'}").model.state_dict()
    b = models.load_model(f"open_clip:local-dir:{tmp_path / 'dirmodel'}").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = models.load_model("open_clip:winnow-tiny", allow_random=True).model.state_dict()
    assert not torch.equal(a["text_projection"], fresh["text_projection"])  # it did train


def test_quick_gelu_weights_keep_quick_gelu_in_the_output_spec():
    assert _output_spec(models.parse_spec("open_clip:ViT-B-32/openai"), "x.pt") == "open_clip:ViT-B-32-quickgelu@x.pt"
    assert _output_spec(models.parse_spec("open_clip:ViT-B-32/laion2b_s34b_b79k"), "x.pt") == "open_clip:ViT-B-32@x.pt"


@pytest.mark.parametrize("model, output, needle", [
    ("open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14", "out.pt", "give a directory"),
    ("ViT-B-32", "out.pt", "must start with 'open_clip:'"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, model, output, needle):
    code, _, err = run_cli(capsys, "train-dfn", "--data", _hq(tmp_path, 4), "--model", model,
                           "--output", tmp_path / output)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_data_without_images_is_a_clear_error(tmp_path, capsys):
    pq.write_table(pa.table({"url": ["http://x/a.jpg"], "caption": ["a cat"]}), tmp_path / "urls.parquet")
    code, _, err = run_cli(capsys, "train-dfn", "--data", tmp_path / "urls.parquet", "--model",
                           "open_clip:winnow-tiny", "--output", tmp_path / "m.pt")
    assert code == 2 and "no 'image' column" in err
