"""image_classify: a Hugging Face image classifier (tiny, random weights, built from the repo's config and
loaded back by path or from a hub cache) gives what transformers' image-classification pipeline gives;
bad configuration is one line; bad images and thresholds are per-row rejections; it runs in a pipeline."""
import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.tiny_clip import encode
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages.base import run_on_live_rows
from winnow.stages.context import StageContext
from winnow.stages.errors import WinnowError
from winnow.stages.filter.classify import ImageClassify
from winnow.stages.models.tiny_classifier import build_tiny_classifier

LABELS = {"pwatermark": "watermark", "pclean": "clean"}


@pytest.fixture(scope="module")
def tiny_clf(tmp_path_factory):
    return build_tiny_classifier("tiny-vit", str(tmp_path_factory.mktemp("clf") / "tiny-vit"))


def classify(stage, table):
    """What a runner does with a map stage: set up once, then process the live rows."""
    stage.ensure_setup()
    return run_on_live_rows(table, stage.process_batch, stage.produces())


def pipeline_scores(model_dir, images: list[bytes]) -> list[dict]:
    """The reference: transformers' own image-classification pipeline, one PIL image at a time."""
    from transformers import pipeline

    pipe = pipeline("image-classification", model=model_dir, top_k=None)
    return [{d["label"]: d["score"] for d in pipe(Image.open(io.BytesIO(data)))} for data in images]


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def odd_images() -> dict[str, bytes]:
    base = Image.new("RGB", (300, 200), (200, 30, 30))
    base.paste(Image.effect_noise((120, 80), 60).convert("RGB"), (20, 30))  # content, so rotation matters
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    return {"gray": encode(base.convert("L"), "JPEG"), "cmyk": encode(base.convert("CMYK"), "JPEG"),
            "rgba_png": encode(rgba, "PNG"), "palette": encode(base.convert("P"), "PNG"),
            "webp": encode(base, "WEBP"), "gif": encode(base.convert("P"), "GIF"),
            "exif_rotated": encode(base, "JPEG", exif=_exif(6)), "one_pixel": encode(Image.new("RGB", (1, 1)), "PNG")}


def test_scores_equal_the_transformers_pipeline_on_real_photos(coco_dir, tiny_clf):
    photos = {p.name: p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))}
    images = {**photos, **odd_images()}
    table = pa.table({"uid": list(images), "image": list(images.values())})
    out = classify(ImageClassify(model=tiny_clf, labels=LABELS, device="cpu", model_batch=7), table)
    ref = pipeline_scores(tiny_clf, list(images.values()))
    assert out["reject_reason"].null_count == len(images)
    for col, label in LABELS.items():
        assert out.schema.field(col).type == pa.float32()
        ours = out[col].to_numpy()
        theirs = np.array([r[label] for r in ref])
        assert np.abs(ours - theirs).max() <= 1e-5, (col, np.abs(ours - theirs).max())
    assert np.std(out["pwatermark"].to_numpy()[:len(photos)]) > 0.05  # scores differ per photo: not vacuous
    assert len(photos) >= 40


def test_multi_label_models_use_sigmoid_as_the_pipeline_does(tmp_path, coco_dir):
    model = build_tiny_classifier("tiny-vit", str(tmp_path / "ml"), seed=3, overrides={
        "problem_type": "multi_label_classification", "id2label": {"0": "nsfw", "1": "watermark", "2": "blurry"}})
    images = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:12]]
    labels = {"pnsfw": "nsfw", "pwatermark": "watermark", "pblurry": "blurry"}
    out = classify(ImageClassify(model=model, labels=labels), pa.table({"uid": list("abcdefghijkl"), "image": images}))
    ref = pipeline_scores(model, images)
    for col, label in labels.items():
        np.testing.assert_allclose(out[col].to_numpy(), [r[label] for r in ref], atol=1e-5)
    sums = sum(out[c].to_numpy() for c in labels)
    assert np.abs(sums - 1).max() > 0.05  # independent sigmoids, not a softmax


@pytest.mark.parametrize("params, needle", [
    ({"labels": LABELS}, r"parameter 'model' is required"),
    ({"model": "MODEL"}, r"set 'labels'"),
    ({"model": "MODEL", "labels": {"pnsfw": "nsfw"}},
     r"label 'nsfw' \(column 'pnsfw'\) is not a label of .*tiny-vit; its labels: clean, watermark$"),
    ({"model": "MODEL", "labels": {"caption": "watermark"}}, r"labels column 'caption' would overwrite"),
    ({"model": "MODEL", "labels": LABELS, "reject_above": {"pnsfw": 0.5}},
     r"reject_above names column 'pnsfw', which is not in labels \(pwatermark, pclean\)"),
    ({"model": "MODEL", "labels": LABELS, "reject_below": {"pclean": True}}, r"reject_below.pclean must be a number"),
    ({"model": "MODEL", "labels": LABELS, "revision": "v1"}, r"'revision' applies to hub ids"),
    ({"model": "/nonexistent/models/clf", "labels": LABELS}, r"model directory /nonexistent/models/clf not found"),
    ({"model": "org/name@v1", "revision": "v2", "labels": LABELS}, r"pins revision 'v1' but parameter 'revision'"),
    ({"model": "not a hub id!", "labels": LABELS}, r"must be a hub id 'org/name'"),
    ({"model": "MODEL", "labels": LABELS, "device": "gpu"}, r"parameter 'device' must be auto, cpu, cuda"),
])
def test_bad_configuration_is_one_line_at_config_time(tiny_clf, params, needle):
    params = {k: (tiny_clf if v == "MODEL" else v) for k, v in params.items()}
    with pytest.raises(WinnowError, match=needle) as err:
        ImageClassify(**params)
    assert "\n" not in str(err.value)


def test_a_hub_id_missing_from_the_cache_fails_offline_in_one_line():
    stage = ImageClassify(model="winnow-test/no-such-classifier@v1", labels={"pwatermark": "watermark"})
    assert stage.resources.gpus is None  # runner decides
    with pytest.raises(WinnowError, match=r"^stage 'image_classify': model 'winnow-test/no-such-classifier' "
                                          r"\(revision v1\) is not available offline: it is not in the Hugging "
                                          r"Face cache") as err:
        stage.ensure_setup()
    assert "\n" not in str(err.value)


def _fake_hub_cache(root, model_dir, repo="winnow-test/tiny-vit", commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes for a downloaded repo: snapshots/<commit>/ and refs/main."""
    import shutil

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_a_hub_id_loads_from_the_cache_and_records_the_resolved_commit(tmp_path, tiny_clf, coco_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    commit = _fake_hub_cache(tmp_path, tiny_clf)
    images = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:5]]
    table = pa.table({"uid": list("abcde"), "image": images})
    by_path = classify(ImageClassify(model=tiny_clf, labels=LABELS), table)["pwatermark"].to_pylist()
    for model, revision in (("winnow-test/tiny-vit", ""), (f"winnow-test/tiny-vit@{commit}", ""),
                            ("winnow-test/tiny-vit", "main")):
        stage = ImageClassify(model=model, labels=LABELS, revision=revision)
        assert classify(stage, table)["pwatermark"].to_pylist() == by_path
        info = stage.provenance()
        assert info["model"] == "winnow-test/tiny-vit" and info["revision"] == f"git:{commit}", info
        assert info["labels"] == ["clean", "watermark"] and info["activation"] == "softmax"
    with pytest.raises(WinnowError, match=r"label 'nsfw' \(column 'p'\) is not a label of winnow-test/tiny-vit"):
        ImageClassify(model="winnow-test/tiny-vit", labels={"p": "nsfw"})  # checked from the cached config
    with pytest.raises(WinnowError, match=r"\(revision v9\) is not available offline"):
        ImageClassify(model="winnow-test/tiny-vit@v9", labels=LABELS).ensure_setup()


def test_bad_images_are_per_row_rejections_and_rejected_rows_cost_nothing(tiny_clf):
    good = encode(Image.effect_noise((96, 64), 50).convert("RGB"), "JPEG")
    bad = {"missing": None, "empty": b"", "unidentified": b"GIF89a but not really",
           "truncated": encode(Image.effect_noise((256, 256), 80).convert("RGB"), "JPEG")[:400],
           "bomb": encode(Image.new("RGB", (3000, 3000)), "PNG")}
    names = ["good", *bad, "earlier"]
    table = pa.table({"uid": names, "image": pa.array([good, *bad.values(), b"junk"], pa.binary()),
                      "reject_stage": [None] * (len(names) - 1) + ["basic_filter"],
                      "reject_reason": [None] * (len(names) - 1) + ["caption_empty"]})
    stage = ImageClassify(model=tiny_clf, labels=LABELS, max_pixels=4_000_000)
    stage.ensure_setup()
    seen = []
    real = stage._prepare_one
    stage._prepare_one = lambda data: seen.append(data) or real(data)
    out = {r["uid"]: r for r in run_on_live_rows(table, stage.process_batch, stage.produces()).to_pylist()}
    assert out["good"]["reject_reason"] is None and 0 <= out["good"]["pwatermark"] <= 1
    assert {n: out[n]["reject_reason"] for n in bad} == {
        "missing": "decode:missing", "empty": "decode:empty", "unidentified": "decode:unidentified",
        "truncated": "decode:corrupt", "bomb": "decode:too_large"}  # cut inside the header: corrupt, not truncated
    assert all(out[n]["pwatermark"] is None and out[n]["reject_stage"] == "image_classify" for n in bad)
    assert (out["earlier"]["reject_stage"], out["earlier"]["reject_reason"]) == ("basic_filter", "caption_empty")
    assert out["earlier"]["pwatermark"] is None and b"junk" not in seen and len(seen) == len(names) - 1


def test_thresholds_reject_naming_column_and_threshold(tiny_clf, coco_dir):
    images = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))]
    table = pa.table({"uid": [str(i) for i in range(len(images))], "image": images})
    scores = classify(ImageClassify(model=tiny_clf, labels=LABELS), table)
    wm = scores["pwatermark"].to_numpy()
    above, below = float(np.round(np.quantile(wm, 0.7), 3)), float(np.round(np.quantile(wm, 0.1), 3))
    out = classify(ImageClassify(model=tiny_clf, labels=LABELS, reject_above={"pwatermark": above},
                                 reject_below={"pwatermark": below}), table)
    reasons = out["reject_reason"].to_pylist()
    expected = [f"classifier:pwatermark>{above:g}" if w > above else f"classifier:pwatermark<{below:g}" if w < below
                else None for w in wm]
    assert reasons == expected
    assert {r for r in reasons if r} == {f"classifier:pwatermark>{above:g}", f"classifier:pwatermark<{below:g}"}
    assert 5 < sum(r is not None for r in reasons) < len(images) - 5
    assert out["pwatermark"].to_pylist() == scores["pwatermark"].to_pylist()  # rejected rows keep their scores


def test_runs_in_a_pipeline_with_its_columns_in_the_manifest(tmp_path, tiny_clf, sample_dir):
    cfg = parse_pipeline({"input": str(sample_dir / "shard-0000[01].parquet"), "stages": [
        {"stage": "basic_filter", "min_words": 1},
        {"stage": "image_classify", "name": "watermark", "model": tiny_clf, "labels": {"pwatermark": "watermark"},
         "reject_above": {"pwatermark": 0.9}}]})
    stats = execute(cfg, str(tmp_path / "run"), progress=False)
    manifest = pq.read_table(tmp_path / "run" / "manifest")
    assert manifest.schema.field("pwatermark").type == pa.float32()
    rows = manifest.to_pylist()
    mine = [r for r in rows if r["reject_stage"] == "watermark"]
    assert all(r["reject_reason"] == "classifier:pwatermark>0.9" or r["reject_reason"].startswith("decode:")
               for r in mine)
    assert any(r["reject_reason"] == "classifier:pwatermark>0.9" for r in mine)
    assert all(r["pwatermark"] is None for r in rows if r["reject_stage"] == "basic_filter")
    assert all(r["pwatermark"] <= 0.9 for r in rows if r["reject_stage"] is None)
    st = stats["stages"]["watermark"]
    assert st["rows_in"] == st["kept"] + sum(st["rejected"].values())
    info = json.loads((tmp_path / "run" / "pipeline.json").read_text())["models"]["watermark"]
    assert info["revision"].startswith("local:sha256:") and info["columns"] == {"pwatermark": "watermark"}


def test_set_up_stage_pickles_for_workers(tiny_clf, coco_dir):
    stage = ImageClassify(model=tiny_clf, labels=LABELS)
    table = pa.table({"uid": ["a", "b"], "image": [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:2]]})
    before = classify(stage, table)["pwatermark"].to_pylist()
    clone = pickle.loads(pickle.dumps(stage))  # what shipping it to a Ray actor does
    assert classify(clone, table)["pwatermark"].to_pylist() == before


@pytest.mark.ray
def test_ray_runner_gives_the_local_scores_and_decisions(ray_local, tiny_clf, sample_dir, tmp_path):
    """Pickled to an actor pool, resources resolved by the runner, provenance from the driver: as local."""
    runs = {}
    for runner in ("local", "ray"):
        cfg = parse_pipeline({"input": str(sample_dir / "shard-00001.parquet"), "stages": [
            {"stage": "image_classify", "model": tiny_clf, "labels": LABELS, "reject_above": {"pwatermark": 0.5},
             "cpus": 1}]})
        execute(cfg, str(tmp_path / runner), runner=runner, progress=False)
        runs[runner] = pq.read_table(tmp_path / runner / "manifest").sort_by("uid")
    assert runs["local"]["reject_reason"].to_pylist() == runs["ray"]["reject_reason"].to_pylist()
    np.testing.assert_allclose(runs["ray"]["pwatermark"].to_numpy(zero_copy_only=False),
                               runs["local"]["pwatermark"].to_numpy(zero_copy_only=False), atol=1e-6, equal_nan=True)
    info = json.loads((tmp_path / "ray" / "pipeline.json").read_text())["models"]["image_classify"]
    assert info["revision"].startswith("local:sha256:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without CUDA")
def test_a_worker_given_a_gpu_without_cuda_fails_in_one_line(tiny_clf):
    with pytest.raises(WinnowError, match=r"^stage 'image_classify' was given 1 GPU on node 10\.0\.0\.9 but sees no "
                                          r"CUDA device"):
        ImageClassify(model=tiny_clf, labels=LABELS).ensure_setup(StageContext(gpus=1.0, node="10.0.0.9"))
    with pytest.raises(WinnowError, match=r"device 'cuda' requested but CUDA is not available on 10\.0\.0\.9$"):
        ImageClassify(model=tiny_clf, labels=LABELS, device="cuda").ensure_setup(StageContext(node="10.0.0.9"))
    assert ImageClassify(model=tiny_clf, labels=LABELS, device="cpu").resources.gpus == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scores_match_cpu_scores(tiny_clf, coco_dir):
    images = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))]
    table = pa.table({"uid": [str(i) for i in range(len(images))], "image": images})
    cpu = classify(ImageClassify(model=tiny_clf, labels=LABELS, device="cpu"), table)["pwatermark"].to_numpy()
    for precision, tol in (("fp32", 1e-3), ("fp16", 0.05)):
        stage = ImageClassify(model=tiny_clf, labels=LABELS, device="cuda", precision=precision)
        gpu = classify(stage, table)["pwatermark"].to_numpy()
        assert stage._clf.device.type == "cuda"
        assert np.abs(gpu - cpu).max() <= tol, (precision, np.abs(gpu - cpu).max())
