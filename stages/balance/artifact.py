"""The MetaCLIP stage's barrier result: thresholds (given or solved), per-group counts, summary, plot data.

Kept out of stages/metaclip.py so the stage module stays the narrow row logic. The artifact is JSON: apply() reads
``thresholds`` and the sparse ``groups[g].entry_ids/counts``; the report reads ``t``, ``groups[g].summary`` and
``groups[g].curve``. The full per-entry table (every entry with its count and probability) goes to Parquet.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from winnow.kernels import balance as bal
from winnow.stages.balance.entries import DEFAULT_T, SINGLE, load_metadata
from winnow.stages.errors import WinnowError

TOP_ENTRIES = 20


def build_artifact(stage, combined: dict) -> dict:

    dense = {g: _dense_counts(g, p, combined, load_metadata(p)) for g, p in stage.groups.items()}
    solver = _Thresholds(stage, dense)
    target_rows, sample = _target_rows(stage, combined), combined.get("sample")
    note = solver.note
    if target_rows is None:
        t_ref = stage.t if stage.t is not None else DEFAULT_T
    elif combined["matched"] == 0 or sample is None:
        t_ref, note = 1.0, "no matched rows: nothing to keep"
    else:
        def expected(t: float) -> float:
            return _expected_kept(stage, dense, solver.at(t), sample, combined["matched"])

        hi = float(max(int(c.max()) if len(c) else 0 for c in dense.values())) + 1.0
        t_ref = bal.bisect_increasing(expected, target_rows, 0.0, hi)
    thresholds = solver.at(t_ref)
    expected_kept = (_expected_kept(stage, dense, thresholds, sample, combined["matched"])
                     if sample is not None else None)
    groups = {}
    for g, path in stage.groups.items():
        counts, t = dense[g], thresholds[g]
        nz = np.flatnonzero(counts)
        groups[g] = {"metadata": path, "n_entries": int(len(counts)), "t": t, "entry_ids": nz.tolist(),
                     "counts": counts[nz].tolist(), "summary": _summary(counts, t, load_metadata(path)),
                     "curve": bal.sorted_curve(counts, t)}
    artifact = {
        "stage": "metaclip", "version": stage.version, "seed": stage.seed, "t": float(t_ref),
        "thresholds": thresholds, "rows_in": int(combined["rows"]), "rows_matched": int(combined["matched"]),
        "expected_kept": None if expected_kept is None else round(float(expected_kept), 3),
        "target": {"fraction": stage.target_fraction, "rows": target_rows,
                   "sample_rows": None if sample is None else int(len(sample["hash"]))},
        "groups": groups,
    }
    if note:
        artifact["note"] = note
    if SINGLE in groups:
        artifact["summary"] = groups[SINGLE]["summary"]
        artifact["curve"] = groups[SINGLE]["curve"]
    return artifact


def _dense_counts(group: str, path: str, combined: dict, entries: list) -> np.ndarray:
    counts = np.zeros(len(entries), np.int64)
    if group in combined["counts"]:
        ids, c = combined["counts"][group]
        if len(ids) and int(ids.max()) >= len(entries):
            raise WinnowError(f"metaclip metadata {path}: entry id {int(ids.max())} was matched but the file has "
                              f"{len(entries)} entries (did the file change during the run?)")
        counts[ids] = c
    return counts


def _target_rows(stage, combined: dict) -> float | None:
    if stage.t is not None:
        return None
    if stage.target_rows is not None:
        return float(stage.target_rows)
    if stage.target_fraction is not None:
        return stage.target_fraction * combined["rows"]
    return None


class _Thresholds:
    """t per group from the reference group's t: one group -> t itself; per language -> MetaCLIP 2's rule."""

    def __init__(self, stage, dense: dict[str, np.ndarray]):
        self.groups = list(stage.groups)
        self.ref = stage.reference_lang if stage.lang_metadata else self.groups[0]
        self.dense = dense
        self.tables = {g: bal.tail_table(c) for g, c in dense.items() if g != self.ref}
        self.note = None
        if len(self.groups) > 1 and dense[self.ref].sum() == 0:
            self.note = f"reference_lang '{self.ref}' had no matches: every language uses t"

    def at(self, t_ref: float) -> dict[str, float]:
        if len(self.groups) == 1 or self.note:
            return {g: float(t_ref) for g in self.groups}
        p = bal.tail_fraction(self.dense[self.ref], t_ref)
        # at least 1: a language whose closest share lands on never-matched entries would otherwise get t = 0
        # and lose every row (MetaCLIP 2's p_to_t can return 0 there)
        return {g: float(t_ref) if g == self.ref else max(1.0, bal.threshold_from_table(self.tables[g], p))
                for g in self.groups}


def _expected_kept(stage, dense: dict, thresholds: dict, sample: dict, matched: int) -> float:
    """Expected kept rows: the uid-hash sample's mean keep probability times the matched rows."""
    probs, bases, base = [], [], 0
    for g in stage.groups:
        probs.append(bal.entry_probabilities(dense[g], thresholds[g]))
        bases.append(base)
        base += len(dense[g])
    probs_all, bases = np.concatenate(probs), np.asarray(bases, np.int64)
    offsets, ids = sample["offsets"], sample["ids"]
    shift = np.repeat(bases[np.asarray(sample["group"], np.int64)], np.diff(offsets))
    keep = bal.keep_probabilities(offsets, ids + shift, probs_all)
    return float(keep.sum()) * matched / max(len(keep), 1)


def _summary(counts: np.ndarray, t: float, entries: list) -> dict:
    head = counts >= t
    matched = counts > 0
    total = int(counts.sum())
    top = np.argsort(-counts, kind="stable")[:TOP_ENTRIES]
    top = top[counts[top] > 0]
    probs = bal.entry_probabilities(counts[top], t)
    return {
        "entries": int(len(counts)), "matched_entries": int(matched.sum()),
        "head_entries": int((head & matched).sum()), "tail_entries": int((~head & matched).sum()),
        "matches": total, "head_matches": int(counts[head].sum()),
        "expected_matches_after": float(np.minimum(counts, t).sum()),
        "tail_fraction": bal.tail_fraction(counts, t),
        "top": [{"entry_id": int(i), "entry": entries[i], "count": int(counts[i]), "p": round(float(p), 6)}
                for i, p in zip(top, probs)],
    }


def entry_table(artifact: dict) -> pa.Table:
    """Every entry of every group: id, text, count, probability, expected matches after balancing."""
    tables = []
    for g, info in artifact["groups"].items():
        entries = load_metadata(info["metadata"])
        counts = np.zeros(info["n_entries"], np.int64)
        counts[np.asarray(info["entry_ids"], np.int64)] = info["counts"]
        t = artifact["thresholds"][g]
        tables.append(pa.table({
            "group": pa.array([g] * len(counts), pa.string()),
            "entry_id": pa.array(np.arange(len(counts), dtype=np.int32)),
            "entry": pa.array(entries, pa.string()),
            "count": pa.array(counts),
            "probability": pa.array(bal.entry_probabilities(counts, t)),
            "expected_after": pa.array(np.minimum(counts, t).astype(np.float64)),
            "head": pa.array(counts >= t),
        }))
    return pa.concat_tables(tables) if tables else pa.table({})
