"""`winnow train-head`: a head trained on tiny-CLIP embeddings of colour vs greyscale images separates
them held out, and loads back in score_embeddings."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.tiny_clip import encode, tiny_checkpoint
from winnow.pipeline import cli
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.pipeline.tools.sample import generate
from winnow.pipeline.tools.train_head import rankdata, roc_auc
from winnow.stages.filter.score_embeddings import ScoreEmbeddings


def test_roc_auc_and_ranks():
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert rankdata(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]


def test_train_head_separates_greyscale_images(tmp_path, capsys):
    import io

    samples, _ = generate(400, seed=5, fractions={p: 0.0 for p in ("corrupt_image", "zero_bytes", "tiny_image",
                                                                   "empty_caption", "extreme_aspect")})
    uids, images, captions, labels = [], [], [], []
    for uid, img, cap in zip(samples["uid"].to_pylist(), samples["image"].to_pylist(), samples["caption"].to_pylist()):
        if not img or not cap:
            continue
        # every other image made greyscale (each image once: a colour/greyscale pair split across train and held-out
        # would let the head learn the image, not the colour)
        pil = Image.open(io.BytesIO(img)).convert("RGB")
        label = len(uids) % 2
        uids.append(uid)
        images.append(encode(pil.convert("L").convert("RGB") if label else pil, "PNG"))
        captions.append(cap)
        labels.append(label)
    pq.write_table(pa.table({"uid": uids, "image": images, "caption": captions}), tmp_path / "pool.parquet")
    pq.write_table(pa.table({"uid": uids, "label": labels}), tmp_path / "labels.parquet")
    tiny = tiny_checkpoint(tmp_path / "tiny.pt")
    cfg = parse_pipeline({"input": str(tmp_path / "pool.parquet"), "stages": [
        {"stage": "clip_score", "model": tiny, "device": "cpu", "embeddings_dir": "emb"}]})
    execute(cfg, str(tmp_path / "run"), progress=False)

    code = cli.main(["train-head", "--embeddings", str(tmp_path / "run" / "emb"), "--labels",
                     str(tmp_path / "labels.parquet"), "--output", str(tmp_path / "head.pt"), "--kind", "mlp"])
    out = capsys.readouterr().out
    assert code == 0
    auc = float(out.split("held-out ROC AUC ")[1].split()[0])
    assert auc >= 0.9, out
    assert out.strip().endswith(f"use it as: head:winnow@{tmp_path / 'head.pt'}")

    stage = ScoreEmbeddings(embeddings=str(tmp_path / "run" / "emb"),
                            heads={"grey": f"head:winnow@{tmp_path / 'head.pt'}"})
    stage.ensure_setup()
    res = stage.process_batch(pa.table({"uid": uids}))["grey"].to_numpy(zero_copy_only=False)
    assert ((res >= 0) & (res <= 1)).all()
    assert roc_auc(res, np.array(labels)) >= 0.9  # (training rows included: a sanity check of the loaded head)


def test_regression_labels_print_mse_and_spearman(tmp_path, capsys):
    rng = np.random.default_rng(0)
    dim, n = 32, 400
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    w = rng.normal(size=dim)
    uids = [f"u{i}" for i in range(n)]
    table = pa.table({"uid": uids, "image_embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(emb.astype(np.float16).reshape(-1)), dim)}).replace_schema_metadata({"winnow.model": "open_clip:x"})
    (tmp_path / "emb").mkdir()
    pq.write_table(table, tmp_path / "emb" / "part-0.parquet")
    (tmp_path / "scores.csv").write_text("uid,score\n" + "".join(f"{u},{s}\n" for u, s in zip(uids, emb @ w * 3 + 5)))
    code = cli.main(["train-head", "--embeddings", str(tmp_path / "emb"), "--labels", str(tmp_path / "scores.csv"),
                     "--output", str(tmp_path / "reg.pt")])
    out = capsys.readouterr().out
    assert code == 0
    spearman = float(out.split("Spearman ")[1].split()[0])
    assert spearman >= 0.95, out
