"""Embedding heads: published architectures load in their published layout and compute what a plain
reimplementation computes; in clip_score they equal score_embeddings over the cached side dataset;
mismatches are one clear error; their columns filter through `filter`."""
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from tests.tiny_clip import tiny_checkpoint
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages.errors import WinnowError
from winnow.stages.filter.clip_score import ClipScore
from winnow.stages.filter.score_embeddings import ScoreEmbeddings
from winnow.stages.models import heads as H


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt")


def _lin(g, out, inp):
    return {"weight": torch.randn(out, inp, generator=g) / inp ** 0.5, "bias": torch.randn(out, generator=g) * 0.1}


def aesthetic_v1_state(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _lin(g, 1, dim)  # LAION-AI/aesthetic-predictor: a bare nn.Linear(768, 1) state dict


def aesthetic_v2_state(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for idx, (out, inp) in zip((0, 2, 4, 6, 7), ((1024, dim), (128, 1024), (64, 128), (16, 64), (1, 16))):
        for k, v in _lin(g, out, inp).items():
            state[f"layers.{idx}.{k}"] = v
    return state


def nsfw_state(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {"mean": torch.randn(dim, generator=g) * 0.02, "variance": torch.rand(dim, generator=g) * 1e-3 + 1e-4}
    for idx, (out, inp) in zip((0, 2, 4, 6), ((64, dim), (512, 64), (256, 512), (1, 256))):
        for k, v in _lin(g, out, inp).items():
            state[f"layers.{idx}.{k}"] = v
    return state


def plain(kind, state, x):
    """The published forward passes written out with plain torch ops."""
    x = torch.from_numpy(x)
    if kind == "aesthetic-v1":
        return (x @ state["weight"].T + state["bias"]).reshape(-1).numpy()
    if kind == "aesthetic-v2":  # no activations between the Linear layers (dropout is identity in eval)
        for idx in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{idx}.weight"].T + state[f"layers.{idx}.bias"]
        return x.reshape(-1).numpy()
    x = (x - state["mean"]) / torch.clamp(state["variance"].sqrt(), min=1e-7)
    for idx in (0, 2, 4):
        x = torch.relu(x @ state[f"layers.{idx}.weight"].T + state[f"layers.{idx}.bias"])
    return torch.sigmoid(x @ state["layers.6.weight"].T + state["layers.6.bias"]).reshape(-1).numpy()


STATES = {"aesthetic-v1": aesthetic_v1_state, "aesthetic-v2": aesthetic_v2_state, "nsfw-laion": nsfw_state}


def unit16(n, dim, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.mark.parametrize("kind", list(STATES))
def test_published_head_loads_and_matches_plain_ops(tmp_path, kind):
    state = STATES[kind](768)
    path = tmp_path / f"{kind}.pth"
    torch.save(state, path)  # the published layout: a plain state dict
    head = H.load_head(f"head:{kind}@{path}")
    assert head.dim == 768 and head.model == H.OPENAI_L14
    x16 = unit16(50, 768)
    x = x16.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours, ref = head(x16), plain(kind, state, x)
    assert ours.dtype == np.float32 and ours.shape == (50,)
    assert np.abs(ours - ref).max() < 1e-5
    assert np.std(ref) > 1e-3  # not a constant function


def test_shape_and_layout_mismatches_are_one_error(tmp_path):
    torch.save(aesthetic_v2_state(768), tmp_path / "v2.pth")
    with pytest.raises(WinnowError, match="does not hold nsfw-laion weights|does not match the nsfw-laion"):
        H.load_head(f"head:nsfw-laion@{tmp_path / 'v2.pth'}")
    bad = aesthetic_v2_state(768)
    bad["layers.2.weight"] = torch.zeros(100, 1024)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WinnowError, match=r"layers.2.weight: file \(100, 1024\) vs \(128, 1024\)"):
        H.load_head(f"head:aesthetic-v2@{tmp_path / 'bad.pth'}")
    with pytest.raises(WinnowError, match="unknown head kind"):
        H.parse_head(f"head:pretty@{tmp_path / 'v2.pth'}")
    with pytest.raises(WinnowError, match="not found"):
        H.parse_head("head:aesthetic-v2@/nowhere.pth")
    with pytest.raises(WinnowError, match="not a `winnow train-head` file"):
        H.load_head(f"head:winnow@{tmp_path / 'v2.pth'}")


def test_wrong_model_or_dimension_names_both(tmp_path, tiny):
    torch.save(aesthetic_v2_state(768), tmp_path / "l14.pth")
    with pytest.raises(WinnowError, match=r"expects image embeddings of open_clip:ViT-L-14/openai \(768-d\).*"
                                          r"embeddings are of open_clip:winnow-tiny"):
        ClipScore(model=tiny, heads={"aesthetic": f"head:aesthetic-v2@{tmp_path / 'l14.pth'}"}, device="cpu")
    # right model named, wrong dimension: refused at setup, naming both
    stage = ClipScore(model=tiny, device="cpu", heads={"aesthetic": f"head:aesthetic-v2@{tmp_path / 'l14.pth'};"
                                                                    f"model={tiny}"})
    with pytest.raises(WinnowError, match=r"expects 768-d image embeddings .* are 64-d"):
        stage.ensure_setup()
    # aliases of OpenAI ViT-L/14 pass the model check without loading anything big
    head = H.load_head(f"head:aesthetic-v2@{tmp_path / 'l14.pth'}")
    head.check("open_clip:ViT-L-14-quickgelu/openai", 768, "x")
    with pytest.raises(WinnowError, match="ViT-B-32"):
        head.check("open_clip:ViT-B-32/openai", 512, "x")


@pytest.fixture(scope="module")
def tiny_heads(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("heads")
    specs = {}
    for col, kind in (("aesthetic", "aesthetic-v2"), ("nsfw", "nsfw-laion"), ("aes1", "aesthetic-v1")):
        torch.save(STATES[kind](64, seed=3), d / f"{kind}.pth")
        specs[col] = f"head:{kind}@{d / f'{kind}.pth'};model={tiny}"
    return specs


def test_in_engine_heads_equal_cached_embeddings_stage(tmp_path, tiny, tiny_heads, sample_dir):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "clip_score", "model": tiny, "device": "cpu", "embeddings_dir": "emb", "heads": tiny_heads}]})
    execute(cfg, str(tmp_path / "run"), progress=False)
    manifest = pq.read_table(tmp_path / "run" / "manifest")
    assert all(manifest.schema.field(c).type == "float" for c in tiny_heads)
    cfg2 = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "score_embeddings", "embeddings": str(tmp_path / "run" / "emb"), "heads": tiny_heads}]})
    execute(cfg2, str(tmp_path / "cached"), progress=False)
    cached = pq.read_table(tmp_path / "cached" / "manifest")
    a = dict(zip(manifest["uid"].to_pylist(), zip(*[manifest[c].to_pylist() for c in tiny_heads])))
    b = dict(zip(cached["uid"].to_pylist(), zip(*[cached[c].to_pylist() for c in tiny_heads])))
    assert a.keys() == b.keys()
    scored = [u for u, v in a.items() if v[0] is not None]
    assert len(scored) > 300
    for u, va in a.items():  # unscored rows (decode errors) are null in both
        assert (va[0] is None) == (b[u][0] is None), u
    diff = max(abs(x - y) for u in scored for x, y in zip(a[u], b[u]))
    assert diff <= 1e-5, diff
    assert np.std([a[u][0] for u in scored]) > 1e-4


def test_filter_on_a_head_column(tmp_path, tiny, tiny_heads, sample_dir):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "clip_score", "model": tiny, "device": "cpu", "embeddings_dir": "emb",
         "heads": {"aesthetic": tiny_heads["aesthetic"]}}]})
    execute(cfg, str(tmp_path / "run"), progress=False)
    scores = pq.read_table(tmp_path / "run" / "manifest")["aesthetic"].drop_null().to_numpy()
    cut = float(np.median(scores))
    cfg2 = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "score_embeddings", "embeddings": str(tmp_path / "run" / "emb"),
         "heads": {"aesthetic": tiny_heads["aesthetic"]}},
        {"stage": "filter", "keep_where": f"aesthetic < {cut}"}]})
    execute(cfg2, str(tmp_path / "f"), progress=False)
    m = pq.read_table(tmp_path / "f" / "manifest")
    kept = m.filter(pc.is_null(m["reject_reason"]))
    assert kept.num_rows > 50 and (kept["aesthetic"].to_numpy() < cut).all()
    reasons = set(m["reject_reason"].drop_null().to_pylist())
    assert any(r.startswith("filter:") for r in reasons)


def test_score_embeddings_refuses_a_side_dataset_of_another_model(tmp_path, tiny, sample_dir):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "clip_score", "model": tiny, "device": "cpu", "embeddings_dir": "emb"}]})
    execute(cfg, str(tmp_path / "run"), progress=False)
    torch.save(aesthetic_v2_state(64), tmp_path / "h.pth")
    stage = ScoreEmbeddings(embeddings=str(tmp_path / "run" / "emb"),
                            heads={"a": f"head:aesthetic-v2@{tmp_path / 'h.pth'}"})
    with pytest.raises(WinnowError, match=r"open_clip:ViT-L-14/openai \(64-d\).*embeddings are of "
                                          r"open_clip:winnow-tiny"):
        stage.ensure_setup()
