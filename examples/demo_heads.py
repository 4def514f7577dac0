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

# judge column -> planted problem it learns; the pipeline rejects a row whose score is >= THRESHOLD
JUDGES = {"watermark": "watermark"}
THRESHOLD = 0.5


def labelled_set(folder: str, rows: int, seed: int = 103) -> dict[str, str]:
    """Write a labelled image set and one ``uid,label`` CSV per judge; returns judge -> labels path."""
    clean = {k: 0.0 for k in PROBLEMS}
    samples, truth = generate(rows, seed=seed, fractions={**clean, "watermark": 0.3})
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    pq.write_table(samples, os.path.join(folder, "images", "labelled.parquet"))
    problems = truth["problem"].to_pylist()
    paths = {}
    for judge, problem in JUDGES.items():
        paths[judge] = os.path.join(folder, f"{judge}-labels.csv")
        labels = pa.table({"uid": truth["uid"], "label": pa.array([int(p == problem) for p in problems], pa.int8())})
        pcsv.write_csv(labels, paths[judge])
    return paths


def train_judges(winnow, folder: str, model: str, rows: int) -> dict[str, str]:
    """Embed the labelled set with ``model``, train one head per judge; returns column -> head spec."""
    labels = labelled_set(folder, rows)
    run = os.path.join(folder, "embed")
    winnow("stage", "clip_score", "--input", os.path.join(folder, "images"), "--output", run, "--quiet",
           "--set", f"model={model}", "--set", "embeddings_dir=embeddings", "--set", "cpus=1")
    heads = {}
    for judge, path in labels.items():
        out = os.path.join(folder, f"{judge}-head.pt")
        winnow("train-head", "--embeddings", os.path.join(run, "embeddings"), "--labels", path, "--output", out)
        heads[judge] = f"head:winnow@{out}"
    return heads


def keep_where() -> str:
    """The filter stage's predicate: a rejection names the first judge that failed and its threshold."""
    return " and ".join(f"{judge} < {THRESHOLD}" for judge in JUDGES)
