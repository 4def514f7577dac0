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


# ------------------------------------------------------------------------------ bad input, through the CLI
DIM = 16


def _side_dataset(folder, n=200, parts=4, nan_rows=(), seed=0):
    """A clip_score-shaped embeddings_dir by hand: float16 unit vectors keyed by uid in ``parts`` files,
    labels linearly separable (the sign of a fixed projection); returns (uids, labels)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = (emb @ rng.normal(size=DIM) > 0).astype(int)
    emb = emb.astype(np.float16)
    emb[list(nan_rows)] = np.nan
    uids = [f"u{i:04d}" for i in range(n)]
    folder.mkdir()
    for k, idx in enumerate(np.array_split(np.arange(n), parts)):
        table = pa.table({"uid": [uids[i] for i in idx], "image_embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(emb[idx].reshape(-1)), DIM)}).replace_schema_metadata({"winnow.model": "open_clip:x"})
        pq.write_table(table, folder / f"part-{k}.parquet")
    return uids, labels


def _cli(*argv):
    """``python -m winnow.pipeline.cli train-head ...``: (exit code, stdout, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "winnow.pipeline.cli", "train-head", *map(str, argv)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _train(capsys, *argv):
    """The same command in this process (torch already imported: the runs that train stay fast)."""
    code = cli.main(["train-head", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _labels_csv(path, uids, labels):
    path.write_text("uid,label\n" + "".join(f"{u},{y}\n" for u, y in zip(uids, labels)))
    return path


def _auc(out: str) -> float:
    return float(out.split("held-out ROC AUC ")[1].split()[0])


def test_unknown_label_uids_and_unlabelled_rows_are_skipped_and_counted(tmp_path, capsys):
    import torch

    uids, labels = _side_dataset(tmp_path / "emb")
    ghosts = [f"ghost-{i}" for i in range(12)]
    path = _labels_csv(tmp_path / "labels.csv", uids + ghosts, list(labels) + [1] * 12)
    with open(path, "a") as f:
        f.write("u9999,\n,1\n")  # one row with no label, one with no uid
    code, out, err = _train(capsys, "--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt")
    assert code == 0, err
    assert f"12 label uids with no embedding in {tmp_path / 'emb'} (skipped)" in out.splitlines()
    assert "2 label rows without a uid or label (skipped)" in out.splitlines()
    assert _auc(out) >= 0.95
    metrics = torch.load(tmp_path / "h.pt", weights_only=True)["metrics"]
    assert metrics["train"] + metrics["held_out"] == len(uids)  # every labelled uid with an embedding, no ghost
    assert sum(metrics["skipped"].values()) == 14


def test_nan_embeddings_are_skipped_and_counted(tmp_path, capsys):
    uids, labels = _side_dataset(tmp_path / "emb", nan_rows=range(0, 200, 20))
    path = _labels_csv(tmp_path / "labels.csv", uids, labels)
    code, out, err = _train(capsys, "--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt")
    assert code == 0, err
    assert "10 embeddings with NaN/inf values or all zeros (skipped)" in out.splitlines()
    assert _auc(out) >= 0.95  # one NaN row in the batch would have made every weight NaN
    held, trained = map(int, out.split("held-out ROC AUC ")[1].split("(")[1].split(" trained")[0].split(" rows, "))
    assert held + trained == 190 and 36 <= held <= 40  # 20% of each class held out


def test_embeddings_missing_rows_are_skipped_and_counted(tmp_path, capsys):
    uids, labels = _side_dataset(tmp_path / "emb", parts=4)
    (tmp_path / "emb" / "part-3.parquet").unlink()  # a quarter of the side dataset lost
    path = _labels_csv(tmp_path / "labels.csv", uids, labels)
    code, out, err = _train(capsys, "--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt")
    assert code == 0, err
    assert f"50 label uids with no embedding in {tmp_path / 'emb'} (skipped)" in out.splitlines()
    assert _auc(out) >= 0.9


def _one_error_line(code, out, err):
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winnow: error: "), err
    return lines[0]


def test_single_class_labels_are_one_error(tmp_path):
    uids, labels = _side_dataset(tmp_path / "emb")
    path = _labels_csv(tmp_path / "labels.csv", uids, [1] * len(uids))
    line = _one_error_line(*_cli("--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt"))
    assert line == (f"winnow: error: --labels {path}: every label is 1 (200 rows); a head needs both 0 and 1 rows")
    assert not (tmp_path / "h.pt").exists()
    # two classes in the file, but the embeddings only have rows of one: the same error, naming the embeddings
    zeros = [u for u, y in zip(uids, labels) if y == 0]
    path = _labels_csv(tmp_path / "mixed.csv", zeros + ["ghost-1", "ghost-2"], [0] * len(zeros) + [1, 1])
    line = _one_error_line(*_cli("--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt"))
    assert f"--embeddings {tmp_path / 'emb'}: every label is 0 ({len(zeros)} rows) among the labelled uids it has" \
        in line


def test_repeated_uid_and_too_few_rows_are_one_error(tmp_path):
    uids, labels = _side_dataset(tmp_path / "emb")
    path = _labels_csv(tmp_path / "rep.csv", uids + [uids[7]], list(labels) + [labels[7]])
    line = _one_error_line(*_cli("--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt"))
    assert line.endswith(f"--labels {path}: uid 'u0007' appears 2 times (one label per uid)")
    one = next(u for u, y in zip(uids, labels) if y == 1)
    zeros = [u for u, y in zip(uids, labels) if y == 0][:10]
    path = _labels_csv(tmp_path / "few.csv", zeros + [one], [0] * 10 + [1])
    line = _one_error_line(*_cli("--embeddings", tmp_path / "emb", "--labels", path, "--output", tmp_path / "h.pt"))
    assert "only 11 of the 11 labelled uids have usable embeddings; need at least 2 of each label" in line


def test_score_embeddings_gives_null_not_nan_for_bad_vectors(tmp_path):
    import torch

    from tests.stages.filter.test_heads import aesthetic_v2_state

    uids, _ = _side_dataset(tmp_path / "emb", n=40, nan_rows=(3, 17))
    torch.save(aesthetic_v2_state(DIM), tmp_path / "a.pth")
    stage = ScoreEmbeddings(embeddings=str(tmp_path / "emb"),
                            heads={"aes": f"head:aesthetic-v2@{tmp_path / 'a.pth'};model=open_clip:x"})
    stage.ensure_setup()
    out = stage.process_batch(pa.table({"uid": uids + ["ghost"]}))
    scores = out["aes"]
    assert scores.null_count == 3 and not np.isnan(scores.drop_null().to_numpy()).any()
    assert [i for i, v in enumerate(scores.to_pylist()) if v is None] == [3, 17, 40]
    errors = out["score_embeddings_error"].to_pylist()
    assert errors[3] == errors[17] == "embedding_not_finite" and errors[40] == "embedding_missing"
    assert sum(e is not None for e in errors) == 3
