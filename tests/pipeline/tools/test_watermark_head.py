"""`winnow train-head` on planted watermarks, end to end as `make demo` does it: a tiny ResNet CLIP trained
here (about a minute on 2 cores), the labelled rows embedded once by `winnow stage clip_score`, a linear head
trained on the cached embeddings, judged on rows it never saw."""
import pyarrow.parquet as pq
import pytest

from examples.demo import DFN_ARCH, training_set
from examples.demo_heads import labelled_set
from winnow.pipeline import cli
from winnow.pipeline.tools import train_dfn, train_head


@pytest.mark.timeout(900)
def test_watermark_head_on_tiny_clip_embeddings_reaches_auc_0_9(tmp_path):
    hq = tmp_path / "hq"
    hq.mkdir()
    pq.write_table(training_set(1500), hq / "hq.parquet")
    ckpt = tmp_path / "clip.pt"
    train_dfn.train(str(hq), f"open_clip:{DFN_ARCH}", str(ckpt), steps=150)
    labels = labelled_set(str(tmp_path / "labelled"), 800)
    run = tmp_path / "embed"
    assert cli.main(["stage", "clip_score", "--input", str(tmp_path / "labelled" / "images"), "--output", str(run),
                     "--quiet", "--set", f"model=open_clip:{DFN_ARCH}@{ckpt}", "--set", "embeddings_dir=embeddings",
                     "--set", "device=cpu"]) == 0
    res = train_head.train(str(run / "embeddings"), labels, str(tmp_path / "watermark.pt"), holdout=0.3)
    metrics = res["metrics"]
    assert metrics["held_out"] == 240 and not metrics["skipped"]
    print(f"watermark head: held-out ROC AUC {metrics['roc_auc']:.3f}")
    assert metrics["roc_auc"] >= 0.9, metrics
