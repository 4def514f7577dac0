"""clip_score / dfn stages: scores mean what open_clip means, keep_top is global, embeddings, odd input."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.tiny_clip import encode, reference_scores, spearman, tiny_checkpoint
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages import get_stage
from winnow.stages.errors import WinnowError
from winnow.stages.filter.clip_score import ClipScore, Dfn


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture(scope="module")
def tiny224(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny224") / "tiny224.pt", arch="winnow-tiny-224", seed=1)


def scored(stage, table):
    stage.ensure_setup()
    return stage.prepare(table)


def test_registered_with_columns_named_by_instance(tiny):
    assert get_stage("clip_score") is ClipScore and get_stage("dfn") is Dfn
    assert ClipScore(model=tiny).produces() == {"clip_score": pa.float32(), "clip_score_error": pa.string()}
    assert "dfn_score" in Dfn(model=tiny).produces()
    assert "l14_score" in ClipScore("l14", model=tiny).produces()
    assert "mine" in ClipScore("l14", model=tiny, column="mine").produces()
    assert Dfn(model=tiny).keep_top == 0.15 and ClipScore(model=tiny).keep_top == 0.0
    assert ClipScore(model=tiny, device="cpu").resources.gpus == 0


@pytest.mark.parametrize("params, needle", [
    ({"keep_top": 1.5}, "keep_top"), ({"min_score": 3.0}, "min_score"), ({"device": "tpu"}, "device"),
    ({"model": "open_clip:NoSuchNet/x"}, "unknown open_clip architecture"),
    ({"model": "open_clip:ViT-B-32/nope"}, "unknown pretrained tag"),
    ({"extra_models": {"clip_score": "open_clip:ViT-B-32/openai"}}, "extra_models"),
    ({"extra_models": {"caption": "open_clip:ViT-B-32/openai"}}, "canonical column"),
])
def test_bad_parameters_fail_at_config_time(tiny, params, needle):
    with pytest.raises(WinnowError, match=needle):
        ClipScore(**{"model": tiny, **params})


def test_real_model_ids_validate_offline():
    ClipScore(model="open_clip:ViT-B-32/laion2b_s34b_b79k", keep_top=0.3)
    Dfn()  # default: open_clip:hf-hub:apple/DFN2B-CLIP-ViT-L-14


def test_fidelity_on_real_photos_vs_plain_open_clip(coco_dir, tiny224):
    """Same model, real COCO photos: our scores vs PIL -> model's preprocess -> encode -> cosine."""
    rows = [json.loads(line) for line in (coco_dir / "captions.jsonl").read_text().splitlines()]
    images = [(coco_dir / r["file"]).read_bytes() for r in rows]
    captions = [r["captions"][0] for r in rows]
    ref = reference_scores(tiny224, images, captions)
    table = pa.table({"uid": [r["file"] for r in rows], "image": images, "caption": captions})
    for draft in (True, False):
        out = scored(ClipScore(model=tiny224, device="cpu", draft=draft), table)
        ours = out["clip_score"].to_numpy()
        assert np.abs(ours - ref).max() <= 0.01, (draft, np.abs(ours - ref).max())
        assert spearman(ours, ref) >= 0.99, draft
    assert np.std(ref) > 0.01  # the scores do spread: the rank test is not vacuous


def odd_table():
    base = Image.new("RGB", (300, 200), (200, 30, 30))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    good = {
        "jpeg": encode(base, "JPEG"), "gray": encode(base.convert("L"), "JPEG"),
        "cmyk": encode(base.convert("CMYK"), "JPEG"), "rgba_png": encode(rgba, "PNG"),
        "palette": encode(base.convert("P"), "PNG"), "i16": encode(Image.new("I;16", (50, 50), 40000), "PNG"),
        "webp": encode(base, "WEBP"), "gif": encode(base.convert("P"), "GIF"),
        "exif": encode(base, "JPEG", exif=_exif(6)), "tiny": encode(Image.new("RGB", (1, 1)), "PNG"),
    }
    bad = {"missing": None, "empty": b"", "unidentified": b"GIF89a but not really", "truncated":
           encode(Image.effect_noise((256, 256), 80).convert("RGB"), "JPEG")[:400]}
    names = list(good) + list(bad) + ["nocap"]
    images = list(good.values()) + list(bad.values()) + [good["jpeg"]]
    return pa.table({"uid": names, "image": pa.array(images, pa.binary()),
                     "caption": ["a red box"] * (len(names) - 1) + [None]})


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_odd_formats_scored_and_bad_rows_rejected_with_reasons(tiny):
    stage = ClipScore(model=tiny, device="cpu")
    table = odd_table()
    out = stage.apply(scored(stage, table), stage.finalize(stage.combine([stage.partial(table)])))
    by_uid = {r["uid"]: r for r in out.to_pylist()}
    for name in ["jpeg", "gray", "cmyk", "rgba_png", "palette", "i16", "webp", "gif", "exif", "tiny"]:
        assert by_uid[name]["reject_reason"] is None and -1 <= by_uid[name]["clip_score"] <= 1, name
    assert by_uid["missing"]["reject_reason"] == "decode:missing"
    assert by_uid["empty"]["reject_reason"] == "decode:empty"
    assert by_uid["unidentified"]["reject_reason"] == "decode:unidentified"
    assert by_uid["truncated"]["reject_reason"] in ("decode:truncated", "decode:corrupt")
    assert by_uid["nocap"]["reject_reason"] == "caption_missing" and by_uid["nocap"]["clip_score"] is None
    assert all(r["reject_stage"] == "clip_score" for r in out.to_pylist() if r["reject_reason"])


def test_keep_top_is_global_whatever_the_sharding(tmp_path, tiny):
    from winnow.pipeline.tools.sample import generate

    samples, _ = generate(240, seed=5, mismatch=0.3)
    manifests, artifacts = [], []
    for shards in (1, 4):
        src = tmp_path / f"in{shards}"
        bounds = np.linspace(0, samples.num_rows, shards + 1).astype(int)
        for k in range(shards):
            src.mkdir(exist_ok=True)
            pq.write_table(samples.slice(bounds[k], bounds[k + 1] - bounds[k]), src / f"part-{k}.parquet")
        out = tmp_path / f"out{shards}"
        cfg = parse_pipeline({"input": str(src), "stages": [
            {"stage": "clip_score", "model": tiny, "keep_top": 0.25, "device": "cpu", "model_batch": 16}]})
        execute(cfg, str(out), progress=False)
        manifests.append(pq.read_table(out / "manifest").sort_by("uid"))
        artifacts.append(json.loads((out / "artifacts" / "clip_score.json").read_text()))
    assert artifacts[0] == artifacts[1]
    one, four = manifests
    assert one["reject_reason"].to_pylist() == four["reject_reason"].to_pylist()
    scores = one["clip_score"].drop_null().to_numpy()
    kept = pc.sum(pc.is_null(one["reject_reason"])).as_py()
    assert kept == artifacts[0]["rows_at_or_above"] and kept >= int(np.ceil(0.25 * len(scores)))
    assert kept == int((np.rint(scores * 1e6) >= artifacts[0]["threshold_grid"]).sum())
    # global, not per shard: the four shards keep different fractions of their own rows
    shard_of = {u: int(u.split("-")[1]) * 4 // 240 for u in four["uid"].to_pylist()}
    fractions = [np.mean([r is None for u, r in zip(four["uid"].to_pylist(), four["reject_reason"].to_pylist())
                          if shard_of[u] == s]) for s in range(4)]
    assert max(fractions) - min(fractions) > 0.01


def test_partials_merge_in_any_grouping():
    stage = ClipScore(model="open_clip:ViT-B-32/openai", keep_top=0.1)
    rng = np.random.default_rng(0)
    tables = [pa.table({"clip_score": pa.array(rng.uniform(-0.2, 0.5, n).astype(np.float32))}) for n in (5, 0, 300, 41)]
    parts = [stage.partial(t) for t in tables]
    flat = stage.finalize(stage.combine(parts))
    nested = stage.finalize(stage.combine([stage.combine(parts[:2]), stage.combine(parts[2:])]))
    assert flat == nested and flat["scored_rows"] == 346
    allv = np.concatenate([t["clip_score"].to_numpy() for t in tables])
    assert flat["rows_at_or_above"] == (np.rint(allv.astype(np.float64) * 1e6) >= flat["threshold_grid"]).sum() == 35


def test_min_score_and_keep_top_together(tiny):
    stage = ClipScore(model=tiny, min_score=0.0, keep_top=0.5, device="cpu")
    table = pa.table({"clip_score": pa.array([-0.1, 0.05, 0.2, 0.3], pa.float32()),
                      "clip_score_error": pa.array([None] * 4, pa.string())})
    art = stage.finalize(stage.combine([stage.partial(table)]))
    out = stage.apply(table, art)
    assert out["reject_reason"].to_pylist() == ["below_min_score", "below_keep_top", None, None]


def test_embeddings_side_dataset(tmp_path, tiny, sample_dir):
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [
        {"stage": "clip_score", "model": tiny, "embeddings_dir": "embeddings", "device": "cpu"}]})
    execute(cfg, str(tmp_path / "run"), progress=False)
    emb = pq.read_table(tmp_path / "run" / "embeddings")
    manifest = pq.read_table(tmp_path / "run" / "manifest")
    scored_uids = set(manifest.filter(pc.is_valid(manifest["clip_score"]))["uid"].to_pylist())
    assert sorted(emb["uid"].to_pylist()) == sorted(scored_uids)  # one row per scored uid
    assert emb.schema.field("image_embedding").type == pa.list_(pa.float16(), 64)
    meta = pq.read_schema(next((tmp_path / "run" / "embeddings").glob("*.parquet"))).metadata
    assert meta[b"winnow.model"].decode() == tiny
    img = np.stack(emb["image_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    txt = np.stack(emb["text_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    score = dict(zip(manifest["uid"].to_pylist(), manifest["clip_score"].to_pylist()))
    dots = (img * txt).sum(1)
    assert np.abs(dots - np.array([score[u] for u in emb["uid"].to_pylist()])).max() < 3e-3
    files = sorted(os.listdir(tmp_path / "run" / "embeddings"))
    execute(cfg, str(tmp_path / "run2"), progress=False)
    assert sorted(os.listdir(tmp_path / "run2" / "embeddings")) == files  # deterministic names


def test_several_scorers_decode_each_image_once(tiny, tiny224, sample_dir, monkeypatch):
    from winnow.kernels import image as K

    calls = []
    real = K.preprocess_cpu
    monkeypatch.setattr(K, "preprocess_cpu",
                        lambda data, specs, **kw: calls.append(len(specs)) or real(data, specs, **kw))
    table = pq.read_table(sample_dir / "shard-00000.parquet")
    both = scored(ClipScore(model=tiny, extra_models={"big_score": tiny224}, device="cpu"), table)
    n_images = sum(1 for b, c in zip(table["image"].to_pylist(), table["caption"].to_pylist()) if b and c is not None)
    assert len(calls) == n_images and set(calls) == {2}  # one decode, two preprocessings
    alone = scored(ClipScore("big", model=tiny224, device="cpu"), table)
    np.testing.assert_allclose(both["big_score"].to_numpy(zero_copy_only=False),
                               alone["big_score"].to_numpy(zero_copy_only=False), atol=1e-5)


def test_out_of_memory_halves_the_batch_and_retries(tiny, sample_dir):
    table = pq.read_table(sample_dir / "shard-00001.parquet")
    stage = ClipScore(model=tiny, device="cpu", model_batch=32)
    expected = scored(stage, table)["clip_score"].to_numpy(zero_copy_only=False)
    engine = stage._engine
    real = engine._encode

    def encode_or_oom(prep):  # the real encoder, but a "GPU" that fits 8 images at a time
        if len(prep.ok) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(prep)

    engine._encode = encode_or_oom
    got = stage.prepare(table)["clip_score"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(got, expected, atol=1e-5, equal_nan=True)
    assert engine.batch <= 8


def test_chunks_on_cpu_reuse_two_batch_buffers_without_mixing_them(tiny, sample_dir):
    """The prefetch thread normalises chunk k+1 while chunk k is encoded: the two rotating buffers
    must never hand one chunk's pixels to another (small chunks: many turns)."""
    table = pq.read_table(sample_dir / "shard-00003.parquet")
    whole = scored(ClipScore(model=tiny, device="cpu", model_batch=1024), table)["clip_score"]
    stage = ClipScore(model=tiny, device="cpu", model_batch=7)
    chunked = scored(stage, table)["clip_score"]
    np.testing.assert_allclose(chunked.to_numpy(zero_copy_only=False), whole.to_numpy(zero_copy_only=False),
                               atol=1e-5, equal_nan=True)
    assert len(stage._engine._cpu_batches) == 2 and sum(stage._engine._cpu_turns.values()) > 4


def test_provenance_in_pipeline_json(tmp_path, tiny, sample_dir):
    import hashlib

    cfg = parse_pipeline({"input": str(sample_dir / "shard-00002.parquet"), "stages": [
        {"stage": "dfn", "model": tiny, "device": "cpu"}]})
    stats = execute(cfg, str(tmp_path), progress=False)
    info = json.loads((tmp_path / "pipeline.json").read_text())["models"]["dfn"]
    path = tiny.split("@", 1)[1]
    assert info["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest() and info["model"] == tiny
    st = stats["stages"]["dfn"]
    assert st["rows_in"] == st["kept"] + sum(st["rejected"].values())
    assert st["rejected"]["below_keep_top"] > 0


def test_tensor_decode_path_matches_pil_path(tiny, sample_dir):
    """The GPU branch (JPEG header -> torchvision decode -> orient -> resize_crop, PIL for the rest) run
    on CPU tensors: same scores as the PIL path. On a GPU the same branch runs with nvJPEG."""
    table = pq.read_table(sample_dir / "shard-00003.parquet")
    rotated = encode(Image.new("RGB", (320, 200), (20, 160, 60)), "JPEG", exif=_exif(8))
    table = pa.concat_tables([table, pa.table({"uid": ["rot"], "caption": ["a green field"], "image": [rotated]})
                              .cast(table.select(["uid", "caption", "image"]).schema)], promote_options="permissive")
    pil = scored(ClipScore(model=tiny, device="cpu", draft=False), table)
    stage = ClipScore(model=tiny, device="cpu", draft=False)
    stage.ensure_setup()
    stage._engine.use_gpu_decode = True  # torchvision's decoder on CPU stands in for nvJPEG
    tensors = stage.prepare(table)
    a = pil["clip_score"].to_numpy(zero_copy_only=False)
    b = tensors["clip_score"].to_numpy(zero_copy_only=False)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < 0.01
    assert pil["clip_score_error"].to_pylist() == tensors["clip_score_error"].to_pylist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scores_match_cpu_scores(coco_dir, tiny224):
    rows = [json.loads(line) for line in (coco_dir / "captions.jsonl").read_text().splitlines()]
    images = [(coco_dir / r["file"]).read_bytes() for r in rows]
    table = pa.table({"uid": [r["file"] for r in rows], "image": images, "caption": [r["captions"][0] for r in rows]})
    cpu = scored(ClipScore(model=tiny224, device="cpu", draft=False), table)["clip_score"].to_numpy()
    gpu_stage = ClipScore(model=tiny224, device="cuda", precision="fp16")
    gpu = scored(gpu_stage, table)["clip_score"].to_numpy()
    assert gpu_stage._engine.use_gpu_decode
    assert np.abs(gpu - cpu).max() <= 0.01 and spearman(gpu, cpu) >= 0.99


@pytest.mark.parametrize("name", ["datacomp-clip-score.yaml", "dfn-2b.yaml"])
def test_example_configs_validate(name):
    from tests.conftest import REPO
    from winnow.pipeline.config import load_pipeline

    cfg = load_pipeline(str(REPO / "examples" / name))
    stage = cfg.build_stages()[-1]
    assert isinstance(stage, ClipScore) and stage.keep_top in (0.3, 0.15)


def test_set_up_stage_pickles_for_workers(tiny, sample_dir):
    import pickle

    stage = ClipScore(model=tiny, device="cpu")
    stage.ensure_setup()
    clone = pickle.loads(pickle.dumps(stage))  # what shipping it to a Ray actor does
    table = pq.read_table(sample_dir / "shard-00000.parquet").slice(0, 24)
    assert scored(clone, table)["clip_score"].to_pylist() == stage.prepare(table)["clip_score"].to_pylist()


@pytest.mark.ray
def test_ray_runner_gives_the_local_decisions(ray_local, tiny, sample_dir, tmp_path):
    """Pickled to actors, resources from the instance, embeddings under the run dir: same result as local."""
    runs = {}
    for runner in ("local", "ray"):
        cfg = parse_pipeline({"input": str(sample_dir / "shard-0000[01].parquet"), "stages": [
            {"stage": "clip_score", "model": tiny, "keep_top": 0.4, "device": "cpu", "cpus": 1,
             "embeddings_dir": "emb"}]})
        execute(cfg, str(tmp_path / runner), runner=runner, progress=False)
        runs[runner] = tmp_path / runner
    local, ray = (pq.read_table(runs[r] / "manifest").sort_by("uid") for r in ("local", "ray"))
    assert local["reject_reason"].to_pylist() == ray["reject_reason"].to_pylist()
    assert (runs["local"] / "artifacts" / "clip_score.json").read_text() == \
        (runs["ray"] / "artifacts" / "clip_score.json").read_text()
    emb = {r: sorted(pq.read_table(runs[r] / "emb")["uid"].to_pylist()) for r in runs}
    assert emb["local"] == emb["ray"] and len(emb["ray"]) > 150


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without CUDA")
def test_a_worker_given_a_gpu_without_cuda_fails_in_one_line(tiny):
    """device: auto on a worker the runner gave a GPU must use CUDA: no silent fallback to CPU."""
    from winnow.stages.context import StageContext

    with pytest.raises(WinnowError, match=r"^stage 'clip_score' was given 1 GPU on node 10\.0\.0\.9 \(node ab12\) but "
                                          r"sees no CUDA device"):
        ClipScore(model=tiny).ensure_setup(StageContext(gpus=1.0, node="10.0.0.9 (node ab12)"))
    stage = ClipScore(model=tiny)
    stage.ensure_setup(StageContext(gpus=0.0))  # given none: device auto picks what the worker has
    assert stage._engine.device.type == "cpu"
