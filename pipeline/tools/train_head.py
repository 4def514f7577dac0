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
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.errors import WinnowError


def main(args) -> int:
    res = train(args.embeddings, args.labels, args.output, kind=args.kind, steps=args.steps, seed=args.seed,
                holdout=args.holdout)
    m = res["metrics"]
    for why, n in m["skipped"].items():
        print(f"{n} {why} (skipped)")
    if res["task"] == "binary":
        print(f"held-out ROC AUC {m['roc_auc']:.4f} ({m['held_out']} rows, {m['train']} trained)")
    else:
        print(f"held-out MSE {m['mse']:.4f}, Spearman {m['spearman']:.4f} ({m['held_out']} rows, {m['train']} trained)")
    print(f"wrote {res['output']} ({res['seconds']:.1f}s); use it as: {res['spec']}")
    return 0


def read_labels(path: str):
    """(uids, targets, task, skipped counts) from ``uid,label`` (0/1) or ``uid,score``.

    Rows with no uid or no target (null, NaN) are skipped and counted; a repeated uid, labels other
    than 0/1 and a single class are errors.
    """
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
    typ = table.schema.field(target).type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
        raise WinnowError(f"--labels {path}: column '{target}' is {typ}, not a number")
    table = table.combine_chunks()
    values = pc.fill_null(table[target].cast(pa.float64()), float("nan")).to_numpy()
    raw = table["uid"].to_pylist()
    usable = np.array([u is not None and str(u) != "" for u in raw], bool) & ~np.isnan(values)  # CSV: "" = none
    uids = [str(u) for u, ok in zip(raw, usable) if ok]
    y = values[usable]
    uid, times = Counter(uids).most_common(1)[0] if uids else ("", 0)
    if times > 1:  # which label would be true? and the two copies could straddle the held-out split
        raise WinnowError(f"--labels {path}: uid {uid!r} appears {times} times (one label per uid)")
    task = "binary" if target == "label" else "regression"
    if task == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise WinnowError(f"--labels {path}: 'label' must be 0/1 (use a 'score' column for regression)")
    check_classes(y, task, f"--labels {path}")
    skipped = int((~usable).sum())
    return uids, y, task, ({f"label rows without a uid or {target}": skipped} if skipped else {})


def check_classes(y: np.ndarray, task: str, where: str, after: str = "") -> None:
    """One class (or one score value) gives a head nothing to learn: an error, not a constant head."""
    values = np.unique(y)
    if len(values) > 1:
        return
    what = "label" if task == "binary" else "score"
    shown = "no rows" if not len(values) else f"every {what} is {values[0]:g} ({len(y)} rows)"
    need = "both 0 and 1 rows" if task == "binary" else "at least two different scores"
    raise WinnowError(f"{where}: {shown}{after}; a head needs {need}")


def read_embeddings(path: str, uids: list[str]):
    """(model spec, dim, (k, dim) float16 rows, positions in uids that have one, skipped counts).

    A labelled uid with no embedding (not in the side dataset, or a null vector there) and a vector
    with NaN/inf values or all zeros are skipped and counted: neither says anything about the image.
    """
    from winnow.stages.models.embeddings import EmbeddingSource

    src = EmbeddingSource("", path, "", "--embeddings")
    src.open()
    if not src.model:
        raise WinnowError(f"--embeddings {path}: no 'winnow.model' metadata (write it with clip_score embeddings_dir)")
    col = src.raw(pa.table({"uid": pa.array(uids, pa.string())}))
    ok = col.is_valid().to_numpy(zero_copy_only=False)
    emb = np.zeros((0, src.dim or 0), np.float16)
    if ok.any():
        emb = col.filter(pa.array(ok)).flatten().to_numpy(zero_copy_only=False).reshape(int(ok.sum()), -1)
    x = emb.astype(np.float32)
    finite = np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)
    have = np.flatnonzero(ok)
    skipped = {f"label uids with no embedding in {path}": int((~ok).sum()),
               "embeddings with NaN/inf values or all zeros": int((~finite).sum())}
    return src.model, emb.shape[1], emb[finite], have[finite], {k: v for k, v in skipped.items() if v}


def split(y: np.ndarray, holdout: float, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (held-out, train) positions; per class for labels, so both sides see both classes."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == v) for v in (0.0, 1.0)] if task == "binary" else [np.arange(len(y))]
    least = 1 if task == "binary" else 2  # an AUC needs one row of each class held out, a Spearman two rows
    test, train = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        k = min(max(least, int(round(holdout * len(idx)))), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.concatenate(test), np.concatenate(train)


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
    from winnow.stages.models import heads as H

    if kind not in ("linear", "mlp"):
        raise WinnowError(f"--kind must be linear or mlp, got {kind!r}")
    if not 0 < holdout < 1 or steps < 1:
        raise WinnowError("--holdout must be in (0, 1) and --steps >= 1")
    t0 = time.perf_counter()
    uids, y_all, task, skipped = read_labels(labels)
    model, dim, emb16, have, missing = read_embeddings(embeddings, uids)
    skipped.update(missing)
    y = y_all[have]
    check_classes(y, task, f"--embeddings {embeddings}", after=" among the labelled uids it has")
    least = min(int((y == v).sum()) for v in (0, 1)) if task == "binary" else len(y) // 2
    if least < 2:  # a class needs rows on both sides of the split; a regression at least 2 held out
        each = " of each label" if task == "binary" else ""
        raise WinnowError(f"--embeddings {embeddings}: only {len(y)} of the {len(uids)} labelled uids have usable "
                          f"embeddings; need at least {2 if each else 4}{each} (to train on and to hold out)")
    import torch  # after the input checks: a bad file fails fast

    x = H.normalize(emb16.astype(np.float32))  # exactly what Head.__call__ feeds the module
    test, tr = split(y, holdout, seed, task)
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
    metrics = {"train": int(len(tr)), "held_out": int(len(test)), "final_loss": float(loss.detach()),
               "skipped": skipped}
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
