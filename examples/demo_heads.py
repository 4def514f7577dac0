"""The demo's image judge: a watermark head trained on the spot from a few hundred labelled rows.

A labeller marks a few hundred images as watermarked or not (here: a separate `winnow sample` set
whose ground truth stands in for the labeller). The filter CLIP embeds them once (`winnow stage
clip_score` with ``embeddings_dir``), `winnow train-head` fits a linear head on those cached
embeddings (held-out ROC AUC printed), and the pipeline's DFN stage runs the head on the embeddings
it computes anyway: no extra decode, no extra encoder pass.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from winnow.pipeline.tools.sample import PROBLEMS, generate

THRESHOLD = 0.5  # the pipeline rejects a row whose watermark score is >= this
KEEP_WHERE = f"watermark < {THRESHOLD}"  # a rejection reads filter:watermark < 0.5


def labelled_set(folder: str, rows: int, seed: int = 103) -> str:
    """Write a labelled image set (30% watermarked) and its ``uid,label`` CSV; returns the CSV's path."""
    clean = {k: 0.0 for k in PROBLEMS}
    samples, truth = generate(rows, seed=seed, fractions={**clean, "watermark": 0.3})
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    pq.write_table(samples, os.path.join(folder, "images", "labelled.parquet"))
    path = os.path.join(folder, "watermark-labels.csv")
    marked = [int(p == "watermark") for p in truth["problem"].to_pylist()]
    pcsv.write_csv(pa.table({"uid": truth["uid"], "label": pa.array(marked, pa.int8())}), path)
    return path


def train_watermark_head(winnow, folder: str, model: str, rows: int) -> str:
    """Embed the labelled set with ``model`` and train a linear head on it; returns the head spec."""
    labels = labelled_set(folder, rows)
    run = os.path.join(folder, "embed")
    winnow("stage", "clip_score", "--input", os.path.join(folder, "images"), "--output", run, "--quiet",
           "--set", f"model={model}", "--set", "embeddings_dir=embeddings", "--set", "cpus=1")
    out = os.path.join(folder, "watermark-head.pt")
    winnow("train-head", "--embeddings", os.path.join(run, "embeddings"), "--labels", labels, "--output", out)
    return f"head:winnow@{out}"
