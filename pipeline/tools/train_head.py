"""`winnow train-head`: a linear or small MLP head over cached image embeddings, from uid labels.

``--embeddings`` is a clip_score ``embeddings_dir`` (float16 L2-normalised ``image_embedding`` by uid,
``winnow.model`` metadata); ``--labels`` a Parquet or CSV file of ``uid,label`` (0/1: logistic
regression, held-out ROC AUC printed) or ``uid,score`` (regression on the standardised score, MSE and
Spearman printed). A seeded held-out split (``--holdout``, default 20%) is never trained on. Full-batch
AdamW on the CPU: seconds for tens of thousands of rows. The head file records the embedding model
and dimension; it loads as ``head:winnow@HEAD.pt`` in clip_score ``heads:`` or ``score_embeddings``.
"""
from __future__ import annotations

import os
import time

import numpy as np

from winnow.stages.errors import WinnowError


def main(args) -> int:
    res = train(args.embeddings, args.labels, args.output, kind=args.kind, steps=args.steps, seed=args.seed,
                holdout=args.holdout)
    m = res["metrics"]
    if res["task"] == "binary":
        print(f"held-out ROC AUC {m['roc_auc']:.4f} ({m['held_out']} rows, {m['train']} trained)")
    else:
        print(f"held-out MSE {m['mse']:.4f}, Spearman {m['spearman']:.4f} ({m['held_out']} rows, {m['train']} trained)")
    print(f"wrote {res['output']} ({res['seconds']:.1f}s); use it as: {res['spec']}")
    return 0


def read_labels(path: str):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise WinnowError(f"--labels {path}: not found")
    try:
        table = pcsv.read_csv(path) if path.endswith((".csv", ".csv.gz")) else pq.read_table(path)
    except Exception as exc:
        raise WinnowError(f"--labels {path}: cannot be read ({str(exc).splitlines()[0][:200]})") from None
    if "uid" not in table.column_names:
        raise WinnowError(f"--labels {path}: no 'uid' column (columns: {', '.join(table.column_names)})")
    target = "label" if "label" in table.column_names else "score" if "score" in table.column_names else None
    if target is None:
        raise WinnowError(f"--labels {path}: needs a 'label' (0/1) or 'score' (number) column")
    table = table.filter(table[target].is_valid())
    uids = [str(u) for u in table["uid"].to_pylist()]
    y = np.asarray(table[target].to_numpy(zero_copy_only=False), dtype=np.float64)
    if target == "label" and not np.isin(y, (0.0, 1.0)).all():
        raise WinnowError(f"--labels {path}: 'label' must be 0/1 (use a 'score' column for regression)")
    return uids, y, "binary" if target == "label" else "regression"


def read_embeddings(path: str, uids: list[str]):
    """(model spec, dim, (k, dim) float16 rows, positions in uids that have one)."""
    import pyarrow as pa

    from winnow.stages.models.embeddings import EmbeddingSource

    src = EmbeddingSource("", path, "", "--embeddings")
    src.open()
    if not src.model:
        raise WinnowError(f"--embeddings {path}: no 'winnow.model' metadata (write it with clip_score embeddings_dir)")
    col = src.raw(pa.table({"uid": pa.array(uids, pa.string())}))
    ok = col.is_valid().to_numpy(zero_copy_only=False)
    if ok.sum() < 4:
        raise WinnowError(f"--embeddings {path}: only {int(ok.sum())} of the {len(uids)} labelled uids have embeddings")
    valid = col.filter(pa.array(ok))
    emb = valid.flatten().to_numpy(zero_copy_only=False).reshape(len(valid), -1)
    return src.model, emb.shape[1], emb, np.flatnonzero(ok)


def rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy.stats.rankdata's default)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg), ties counted half."""
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def train(embeddings: str, labels: str, output: str, kind: str = "linear", steps: int = 500, seed: int = 0,
          holdout: float = 0.2, hidden: int = 256, lr: float = 1e-2, weight_decay: float = 1e-4) -> dict:
    import torch

    from winnow.stages.models import heads as H

    if kind not in ("linear", "mlp"):
        raise WinnowError(f"--kind must be linear or mlp, got {kind!r}")
    if not 0 < holdout < 1 or steps < 1:
        raise WinnowError("--holdout must be in (0, 1) and --steps >= 1")
    t0 = time.perf_counter()
    uids, y_all, task = read_labels(labels)
    model, dim, emb16, have = read_embeddings(embeddings, uids)
    y = y_all[have]
    x = H.normalize(emb16.astype(np.float32))  # exactly what Head.__call__ feeds the module
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = max(1, int(round(holdout * len(y))))
    test, tr = order[:n_test], order[n_test:]
    mean, std = (0.0, 1.0) if task == "binary" else (float(y[tr].mean()), float(y[tr].std() or 1.0))
    torch.manual_seed(seed)
    net = H.build("winnow", dim, hidden=hidden if kind == "mlp" else 0, task=task, target_mean=mean, target_std=std)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(((y[tr] - mean) / std).astype(np.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "binary" else torch.nn.MSELoss()
    net.train()
    for _ in range(steps):
        loss = loss_fn(net.logits(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.inference_mode():
        pred = net(torch.from_numpy(x[test])).numpy().astype(np.float64)
    metrics = {"train": int(len(tr)), "held_out": int(len(test)), "final_loss": float(loss.detach())}
    if task == "binary":
        metrics["roc_auc"] = roc_auc(pred, y[test])
    else:
        metrics["mse"] = float(np.mean((pred - y[test]) ** 2))
        metrics["spearman"] = spearman(pred, y[test])
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    blob = {"format": H.FORMAT, "kind": kind, "task": task, "model": model, "dim": dim,
            "hidden": hidden if kind == "mlp" else 0, "target_mean": mean, "target_std": std,
            "state_dict": state, "metrics": metrics,
            "trained": {"embeddings": os.path.abspath(embeddings), "labels": os.path.abspath(labels),
                        "steps": steps, "seed": seed, "holdout": holdout, "lr": lr}}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    torch.save(blob, tmp)
    os.replace(tmp, output)
    return {"output": output, "spec": f"head:winnow@{output}", "task": task, "metrics": metrics,
            "seconds": time.perf_counter() - t0}
