"""What the report reads besides the manifest: stats.json, pipeline.json and OUT/artifacts/.

Stages own their artifact formats, so this module reads them by convention and ignores what it
does not recognise: a threshold is any number under a key ending in ``threshold`` (or ``min_score``)
in ``artifacts/<instance>.json``, a ``min_<column>``/``max_<column>`` parameter in the config, or a
top-level ``and`` term of a ``keep_where``/``where`` predicate comparing a column with a number;
MetaCLIP entry counts come from the metaclip stage's artifact (per metadata group) or its Parquet
sidecar, or else from the manifest's ``metaclip_entries``; ``t`` from the artifact or the config.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages import storage
from winnow.stages.errors import WinnowError

THRESHOLD_KEYS = ("threshold", "min_score", "max_score")
COUNT_COLUMNS = ("count", "counts", "match_count", "matches", "n")
COUNT_KEYS = ("counts", "entry_counts")
ID_COLUMNS = ("entry_id", "entry", "id")
T_KEYS = ("t", "threshold_t", "magic_t")


def load_json(path: str, required: bool) -> dict | None:
    if not storage.exists(path):
        if required:
            raise WinnowError(f"{path}: not found; is {os.path.dirname(path) or '.'} a winnow run directory?")
        return None
    try:
        data = storage.read_json(path)
    except (OSError, ValueError) as exc:
        raise WinnowError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WinnowError(f"{path}: expected a JSON object")
    return data


def check_stats(stats: dict, path: str) -> None:
    for key in ("rows_in", "rows_kept", "stages"):
        if key not in stats:
            raise WinnowError(f"{path}: missing key '{key}'")
    for name, st in stats["stages"].items():
        for key in ("rows_in", "kept", "rejected"):
            if key not in st:
                raise WinnowError(f"{path}: stage '{name}' has no '{key}'")


def stage_specs(pipeline: dict | None) -> list[dict]:
    """The configured stages: {"stage": type, "name": instance, **params} in pipeline order."""
    stages = ((pipeline or {}).get("config") or {}).get("stages") or []
    return [s for s in stages if isinstance(s, dict)]


# Threshold artifacts are a few numbers; a bigger JSON (e.g. semdedup's base64 centroids) is not read for them.
THRESHOLD_ARTIFACT_MAX_BYTES = 1 << 20


def artifact(run_dir: str, instance: str, max_bytes: int | None = None) -> dict | None:
    path = storage.join(run_dir, "artifacts", f"{instance}.json")
    try:
        if max_bytes is not None and storage.getsize(path) > max_bytes:
            return None
        return load_json(path, required=False)
    except (OSError, WinnowError):
        return None


def _related(instance: str, column: str) -> bool:
    return column == instance or column.startswith(instance + "_")


def thresholds(run_dir: str, pipeline: dict | None, columns: list[str]) -> dict[str, list[tuple[str, float]]]:
    """column -> [(label, value)] from artifacts first (what was applied), then configured parameters."""
    out: dict[str, list[tuple[str, float]]] = {c: [] for c in columns}

    def add(col: str, label: str, value) -> None:
        if col in out and isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            if all(abs(v - value) > 1e-12 for _, v in out[col]):
                out[col].append((label, float(value)))

    for spec in stage_specs(pipeline):
        inst = spec.get("name") or spec.get("stage") or ""
        art = artifact(run_dir, inst, THRESHOLD_ARTIFACT_MAX_BYTES) or {}
        named = art.get("column") or art.get("score_column")
        cols = [named] if named in out else [c for c in columns if _related(inst, c)]
        for key, value in art.items():
            if key.endswith(THRESHOLD_KEYS) and key not in T_KEYS:
                for c in cols:
                    add(c, f"{inst} {key}", value)
            if key == "thresholds" and isinstance(value, dict):
                for c, v in value.items():
                    add(c, f"{inst} threshold", v)
        for key, value in spec.items():
            for c in columns:
                if key in (f"min_{c}", f"max_{c}"):
                    add(c, f"{inst} {key}", value)
            if key in THRESHOLD_KEYS:
                for c in cols:
                    add(c, f"{inst} {key}", value)
        for col, label, value in predicate_cuts(spec.get("keep_where") or spec.get("where")):
            add(col, f"{inst} {label}", value)
    return out


def predicate_cuts(text) -> list[tuple[str, str, float]]:
    """(column, label, number) for each top-level ``and`` term of a filter predicate comparing a column
    with a number by order (``aesthetic >= 5``, ``5 <= aesthetic``): a cut every kept row passed. The
    label says the rule and the side kept (``keep_where (>=)``). Terms under ``or``/``not`` are no
    single cut and are left out; an unparsable text gives none."""
    from winnow.stages.predicate import Column, parse_predicate

    if not isinstance(text, str) or not text.strip():
        return []
    try:
        terms = parse_predicate(text).conjuncts()
    except WinnowError:
        return []
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    out = []
    for term in terms:
        kind, op, left, right = (term.tree + (None, None))[:4]
        if kind != "cmp" or op not in flipped:
            continue
        if isinstance(left, Column) and _number(right):
            out.append((left.name, f"keep_where ({op})", float(right)))
        elif isinstance(right, Column) and _number(left):
            out.append((right.name, f"keep_where ({flipped[op]})", float(left)))
    return out


def metaclip_instances(pipeline: dict | None) -> list[dict]:
    return [s for s in stage_specs(pipeline) if "metaclip" in str(s.get("stage", "")).lower()]


def metaclip_t(pipeline: dict | None) -> float | None:
    """``t`` as configured (None when the stage solves it for a target)."""
    return next((float(s[k]) for s in metaclip_instances(pipeline) for k in T_KEYS
                 if _number(s.get(k))), None)


def metaclip_curves(run_dir: str, pipeline: dict | None) -> list[dict]:
    """Per metadata group: {"group", "counts" (dense, by entry id), "t", "source"}, most matches first.

    The stage's JSON artifact holds sparse per-group counts (``groups[g].entry_ids/counts/n_entries/t``);
    its ``<instance>.entries.parquet`` sidecar holds every entry (``group, entry_id, count``); a plain
    ``counts`` list is read too. Empty when no artifact exists (the manifest is the fallback).
    """
    names = [s.get("name") or s.get("stage") for s in metaclip_instances(pipeline)] or ["metaclip"]
    for inst in names:
        art = artifact(run_dir, inst) or {}
        t = next((float(art[k]) for k in T_KEYS if _number(art.get(k))), metaclip_t(pipeline))
        per_group = art.get("thresholds") if isinstance(art.get("thresholds"), dict) else {}
        curves = _curves_from_json(art, t, per_group, f"artifacts/{inst}.json")
        if not curves:
            curves = _curves_from_parquet(run_dir, inst, t, per_group)
        if curves:
            return sorted(curves, key=lambda c: -int(c["counts"].sum()))
    return []


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _curves_from_json(art: dict, t, per_group: dict, source: str) -> list[dict]:
    out = []
    groups = art.get("groups") if isinstance(art.get("groups"), dict) else {}
    for g, info in groups.items():
        try:
            ids = np.asarray(info["entry_ids"], np.int64)
            counts = np.asarray(info["counts"], np.int64)
            dense = np.zeros(max(int(info.get("n_entries", 0)), int(ids.max()) + 1 if len(ids) else 0), np.int64)
            dense[ids] = counts
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        g_t = info.get("t") if _number(info.get("t")) else per_group.get(g, t)
        out.append({"group": g, "counts": dense, "t": float(g_t) if _number(g_t) else None, "source": source})
    for key in COUNT_KEYS:
        if not out and isinstance(art.get(key), list):
            out.append({"group": None, "counts": np.asarray(art[key], np.int64), "t": t, "source": source})
    return out


def _curves_from_parquet(run_dir: str, inst: str, t, per_group: dict) -> list[dict]:
    for path in (storage.glob(storage.join(run_dir, "artifacts", "**", "*.parquet"))):
        rel = storage.relpath(path, run_dir)
        if inst not in rel:
            continue
        schema = storage.read_schema(path)
        col = next((c for c in COUNT_COLUMNS if c in schema.names and pa.types.is_integer(schema.field(c).type)), None)
        if not col:
            continue
        table = storage.read_parquet(path)
        if "group" not in table.column_names:
            return [{"group": None, "counts": _counts_by_entry(table, col), "t": t, "source": rel}]
        out = []
        for g in table["group"].unique().to_pylist():
            part = table.filter(pc.equal(table["group"], g))
            g_t = per_group.get(g, t)
            out.append({"group": g, "counts": _counts_by_entry(part, col), "t": g_t if _number(g_t) else None,
                        "source": rel})
        return out
    return []


def _counts_by_entry(table: pa.Table, col: str) -> np.ndarray:
    """Counts indexed by entry id (so they line up with ``metaclip_entries``), whatever the row order."""
    counts = table[col].to_numpy(zero_copy_only=False).astype(np.int64)
    ids = next((c for c in ID_COLUMNS if c in table.column_names and pa.types.is_integer(table.schema.field(c).type)),
               None)
    if ids is None:
        return counts
    pos = table[ids].to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros(int(pos.max()) + 1 if len(pos) else 0, np.int64)
    out[pos] = counts
    return out
