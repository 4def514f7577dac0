"""recaption: tiny random-weight VLMs built from the repo's configs, loaded back through from_pretrained."""
import json
import os

import pyarrow as pa
import pytest

from winnow.pipeline.plan import Step
from winnow.pipeline.tools.sample import PROBLEMS, generate
from winnow.stages.caption.recaption import Recaption
from winnow.stages.errors import WinnowError
from winnow.stages.models.tiny_vlm import build_tiny_vlm

CLEAN = {name: 0.0 for name in PROBLEMS}
TOKENS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlm")
    return {arch: build_tiny_vlm(arch, str(root / arch)) for arch in ("blip", "qwen2_vl", "llava")}


@pytest.fixture(scope="module")
def pool():
    """12 clean rows (varied image sizes, captions of varied length) with a score column."""
    table, _ = generate(12, seed=11, fractions=CLEAN)
    scores = [round(0.05 * i, 2) for i in range(table.num_rows)]
    return table.append_column("clip_score", pa.array(scores, pa.float32()))


def _run(table, **params):
    stage = Recaption(**{"max_new_tokens": TOKENS, "gpus": 0.0, **params})
    out, _ = Step(stage, "map").run(table)
    return out, stage


@pytest.mark.parametrize("arch", ["blip", "qwen2_vl", "llava"])
def test_greedy_batched_equals_one_at_a_time(models, pool, arch):
    # {caption} makes prompt lengths differ, so batches of 5 need padding (or, for BLIP, length buckets)
    params = {"model": models[arch], "prompt": "{caption}" if arch == "blip" else "Alt-text: {caption}. Describe."}
    batched, stage = _run(pool, gen_batch_size=5, **params)
    single, _ = _run(pool, gen_batch_size=1, **params)
    caps = batched["caption_synthetic"].to_pylist()
    assert caps == single["caption_synthetic"].to_pylist()
    assert all(isinstance(c, str) for c in caps) and len(set(caps)) > len(caps) // 2  # images and prompts matter
    assert batched["caption_error"].null_count == pool.num_rows
    assert stage.engine.padding == ("bucket" if arch == "blip" else "left")


def test_decoder_only_right_padding_would_change_captions(models, pool):
    """The equality above is a real check: padding a decoder-only prompt on the wrong side alters outputs."""
    params = {"model": models["qwen2_vl"], "prompt": "Alt-text: {caption}. Describe.", "gen_batch_size": 6}
    left, _ = _run(pool, **params)
    right, _ = _run(pool, padding="right", **params)
    assert left["caption_synthetic"].to_pylist() != right["caption_synthetic"].to_pylist()


def test_same_seed_same_captions_whatever_the_batching(models, pool):
    table = pool.slice(0, 4)
    params = {"model": models["qwen2_vl"], "prompt": "Describe the image.", "do_sample": True, "temperature": 1.2,
              "top_k": 50, "num_captions": 3, "sample_seed": 7}
    first, _ = _run(table, gen_batch_size=5, **params)  # 12 sequences: batches of 5, 5, 2
    single, _ = _run(table.slice(0, 2), gen_batch_size=1, **params)
    reversed_rows, _ = _run(table.take(list(range(table.num_rows))[::-1]), gen_batch_size=4, **params)
    other_seed, _ = _run(table, gen_batch_size=12, **{**params, "sample_seed": 8})
    caps = first["caption_synthetic"].to_pylist()
    assert first.schema.field("caption_synthetic").type == pa.list_(pa.string())
    assert all(len(c) == 3 for c in caps)
    assert caps[:2] == single["caption_synthetic"].to_pylist()
    assert caps == reversed_rows["caption_synthetic"].to_pylist()[::-1]  # a row's samples follow its uid
    assert sum(len(set(c)) == 3 for c in caps) >= len(caps) // 2  # the k captions of a row are distinct draws
    assert caps != other_seed["caption_synthetic"].to_pylist()
    assert set(first["caption_seed"].to_pylist()) == {7}


def test_provenance_columns_and_alt_text_kept(models, pool):
    out, stage = _run(pool, model=models["blip"], prompt="a picture of {caption}", seed=3)
    assert out["caption"].to_pylist() == pool["caption"].to_pylist()  # alt-text never overwritten
    revision = stage.engine.provenance()["revision"]
    assert revision.startswith("sha256:") and len(revision) == len("sha256:") + 16
    assert set(out["caption_model"].to_pylist()) == {models["blip"]}
    assert set(out["caption_model_revision"].to_pylist()) == {revision}
    assert out["caption_prompt"].to_pylist() == [f"a picture of {c}" for c in pool["caption"].to_pylist()]
    params = json.loads(out["caption_gen_params"][0].as_py())
    assert params["max_new_tokens"] == TOKENS and params["do_sample"] is False and params["dtype"] == "float32"
    assert set(out["caption_seed"].to_pylist()) == {3}  # the pipeline seed when sample_seed is unset
    info = stage.provenance()
    assert info["revision"] == revision and info["prompt_template"] == "a picture of {caption}"
    assert info["auto_class"] == "BlipForConditionalGeneration"


def test_revision_checksum_follows_the_weights(models, tmp_path):
    other = build_tiny_vlm("blip", str(tmp_path / "blip-seed1"), seed=1)
    _, a = _run(generate(1, seed=2, fractions=CLEAN)[0], model=models["blip"])
    _, b = _run(generate(1, seed=2, fractions=CLEAN)[0], model=other)
    assert a.engine.revision_id != b.engine.revision_id


def test_bad_images_and_empty_prompts_are_errors_not_rejections(models, pool):
    table = pool.slice(0, 6)
    images = table["image"].to_pylist()
    images[1], images[2], images[3] = b"\xff\xd8 not a jpeg", b"", None
    captions = table["caption"].to_pylist()
    captions[4], captions[5] = "   ", None
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))
    out, _ = _run(table, model=models["qwen2_vl"], prompt="{caption}", gen_batch_size=4)
    assert out["caption_error"].to_pylist() == [None, "image_undecodable", "image_empty", "image_missing",
                                                "empty_prompt", "empty_prompt"]
    caps = out["caption_synthetic"].to_pylist()
    assert isinstance(caps[0], str) and caps[1:] == [None] * 5
    assert out["reject_stage"].null_count == out.num_rows  # nobody rejected
    # an empty template means "no text": unconditional captioning works for every decodable image
    plain, _ = _run(table, model=models["blip"], prompt="")
    assert plain["caption_error"].to_pylist()[4:] == [None, None]
    assert all(isinstance(c, str) for c in plain["caption_synthetic"].to_pylist()[4:])


@pytest.mark.torture
@pytest.mark.timeout(120)
def test_a_prompt_longer_than_the_position_table_is_named_per_row(models, pool):
    """The tiny BLIP's text decoder has 64 learned positions; "red" is one token, BLIP adds [CLS] first.

    Before: the row failed with "generation_failed: IndexError: index out of range in self".
    """
    table = pool.slice(0, 4)
    words = [3, 63, 64, 600]  # fits; fills all 64 positions; one too many; far too many
    captions = pa.array([" ".join(["red"] * n) for n in words], pa.string())
    table = table.set_column(table.schema.get_field_index("caption"), "caption", captions)
    out, stage = _run(table, model=models["blip"], prompt="{caption}", max_field_chars=10_000, max_new_tokens=8)
    errors = out["caption_error"].to_pylist()
    assert errors == [None, None, "generation_failed: prompt too long for the model (65 tokens; it takes 64 positions)",
                      "generation_failed: prompt too long for the model (601 tokens; it takes 64 positions)"]
    assert stage.engine.position_limit == 64
    caps = out["caption_synthetic"].to_pylist()
    assert isinstance(caps[0], str) and isinstance(caps[1], str)  # a full table still leaves room for one token
    assert caps[2:] == [None, None]
    assert out["reject_stage"].null_count == out.num_rows


def test_where_recaptions_only_matching_rows_and_second_pass_keeps_first(models, pool):
    params = {"model": models["blip"], "prompt": "a photo of"}
    low, _ = _run(pool, where="clip_score < 0.2", **params)
    chosen = [s < 0.2 for s in pool["clip_score"].to_pylist()]
    assert 0 < sum(chosen) < pool.num_rows
    assert [c is not None for c in low["caption_synthetic"].to_pylist()] == chosen
    assert [m is not None for m in low["caption_model"].to_pylist()] == chosen
    both, _ = _run(low, where="clip_score >= 0.2 and clip_score < 0.4", **params)
    everything, _ = _run(pool, **params)
    second = [s < 0.4 for s in pool["clip_score"].to_pylist()]
    assert [c is not None for c in both["caption_synthetic"].to_pylist()] == second
    kept = [c for c, s in zip(both["caption_synthetic"].to_pylist(), second) if s]
    assert kept == [c for c, s in zip(everything["caption_synthetic"].to_pylist(), second) if s]


def test_rejected_rows_pass_through(models, pool):
    reasons = [None if i % 3 else "earlier_stage" for i in range(pool.num_rows)]
    table = pool.append_column("reject_stage", pa.array([r and "x" for r in reasons], pa.string()))
    table = table.append_column("reject_reason", pa.array(reasons, pa.string()))
    out, _ = _run(table, model=models["blip"])
    caps = out["caption_synthetic"].to_pylist()
    assert all((c is None) == (r is not None) for c, r in zip(caps, reasons))
    assert out["reject_reason"].to_pylist() == reasons


def test_configuration_errors_are_one_line(models, pool, tmp_path):
    with pytest.raises(WinnowError, match="'model' is required"):
        Recaption()
    with pytest.raises(WinnowError, match="num_captions > 1 needs do_sample"):
        Recaption(model="m", num_captions=2)
    with pytest.raises(WinnowError, match="cannot parse predicate"):
        Recaption(model="m", where="clip_score <")
    with pytest.raises(WinnowError, match="plain column name"):
        Recaption(model="m", prompt="{caption:.10}")
    stage = Recaption(model="m", prompt="{alt_text}")
    with pytest.raises(WinnowError, match="needs column 'alt_text'"):
        stage.check_columns(pool.schema, "input x")
    with pytest.raises(WinnowError, match="uses column 'aesthetic'"):
        _run(pool, model=models["blip"], where="aesthetic > 5")
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(WinnowError, match="cannot load model"):
        _run(pool, model=missing)
    with pytest.raises(WinnowError, match="vllm"):
        if _has_vllm():
            pytest.skip("vllm is installed here")
        _run(pool, model=models["qwen2_vl"], backend="vllm")


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
def test_vllm_backend_captions_on_gpu(models, pool):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM backend needs a CUDA GPU")
    out, stage = _run(pool, model=models["qwen2_vl"], backend="vllm", prompt="Describe.", gpus=1.0)
    assert stage.provenance()["auto_class"] == "vllm.LLM"
    assert out["caption_error"].null_count == pool.num_rows
    assert all(isinstance(c, str) for c in out["caption_synthetic"].to_pylist())


def test_tiny_models_load_from_local_dirs_only(models):
    for arch, path in models.items():
        assert os.path.exists(os.path.join(path, "model.safetensors"))
        assert not [f for f in os.listdir(path) if f.endswith(".py")]  # no remote code: the auto classes load it
        with open(os.path.join(path, "TINY_RANDOM_MODEL.txt"), encoding="utf-8") as f:
            assert "NOT a real captioner" in f.read()


def test_pipeline_run_end_to_end_with_resume(models, tmp_path):
    """recaption + caption_mix through the local runner: manifest, kept shards and pipeline.json provenance."""
    import pyarrow.parquet as pq

    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute
    from winnow.pipeline.tools.sample import write_sample

    write_sample(str(tmp_path / "in"), rows=30, shards=2, seed=5)  # includes corrupt / zero-byte images
    cfg = parse_pipeline({"input": str(tmp_path / "in" / "shard-*.parquet"), "seed": 1, "stages": [
        {"stage": "recaption", "model": models["blip"], "prompt": "a photo of", "max_new_tokens": TOKENS,
         "where": "caption is not null", "gpus": 0},
        {"stage": "caption_mix", "synthetic_ratio": 0.5}]})
    out = tmp_path / "run"
    stats = execute(cfg, str(out), progress=False)
    manifest = pq.read_table(out / "manifest").sort_by("uid")
    assert manifest.num_rows == 30 and stats["rows_kept"] == 30  # recaption rejects nobody
    errors = manifest["caption_error"].to_pylist()
    synthetic = manifest["caption_synthetic"].to_pylist()
    assert all((s is None) == (e is not None or c is None)
               for s, e, c in zip(synthetic, errors, manifest["caption"].to_pylist()))
    assert {e for e in errors if e} <= {"image_undecodable", "image_empty"} and any(errors)
    sources = manifest["caption_source"].to_pylist()
    assert "synthetic" in sources and "alt_text" in sources
    kept = pq.read_table(out / "kept")
    assert {"image", "caption_train", "caption_source", "caption_model_revision"} <= set(kept.column_names)
    with open(out / "pipeline.json", encoding="utf-8") as f:
        models_info = json.load(f)["models"]
    assert models_info["recaption"]["revision"].startswith("sha256:")
    assert models_info["recaption"]["gen_params"]["max_new_tokens"] == TOKENS
    execute(cfg, str(out), progress=False)  # resume: nothing to redo, same result
    assert pq.read_table(out / "manifest").sort_by("uid").equals(manifest)
    with open(out / "pipeline.json", encoding="utf-8") as f:  # provenance survives a run that loaded no model
        assert json.load(f)["models"]["recaption"]["revision"] == models_info["recaption"]["revision"]


def test_stage_pickles_before_setup_with_its_resources():
    """The Ray adapter ships the configured (not yet set up) stage to GPU actors."""
    import pickle

    stage = Recaption(model="m", where="clip_score < 0.2", prompt="{caption}", gpus=0.5, cpus=2.0)
    copy = pickle.loads(pickle.dumps(stage))
    assert copy.resources.gpus == 0.5 and copy.resources.cpus == 2.0
    assert copy.requires == ("uid", "image", "caption") and copy.predicate.columns == ("clip_score",)
