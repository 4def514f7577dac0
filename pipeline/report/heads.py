"""The report's view of embedding heads: per head column its histogram with the threshold the run applied,
and image grids of the highest- and lowest-scored kept and rejected rows over the whole run.

Head columns come from ``pipeline.json``: the ``heads`` of each stage's provenance (``models``: clip_score
and score_embeddings record the head spec per column) and, for a run whose provenance is missing, the
``heads`` parameter in the config. The grids are exact over every manifest row with a score, kept in the
same streaming pass as the histograms: per column, four bounded lists of ``per_grid`` rows.
"""
from __future__ import annotations

from html import escape

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.pipeline.report import charts
from winnow.pipeline.report import html as h
from winnow.pipeline.report.artifacts import stage_specs
from winnow.pipeline.report.scan import table_rows

# (kept?, highest first?) in the order the grids appear
GRIDS = (("kept", True), ("kept", False), ("rejected", True), ("rejected", False))


def head_columns(pipeline: dict | None, columns: list[str]) -> dict[str, dict]:
    """head column -> {"stage": instance, "head": spec} for the run's head columns present in ``columns``."""
    out: dict[str, dict] = {}
    models = (pipeline or {}).get("models") or {}
    for inst, prov in models.items():
        heads = prov.get("heads") if isinstance(prov, dict) else None
        for col, info in (heads.items() if isinstance(heads, dict) else ()):
            spec = info.get("head") if isinstance(info, dict) else info
            out.setdefault(col, {"stage": inst, "head": str(spec)})
    for spec in stage_specs(pipeline):
        heads = spec.get("heads")
        for col, head in (heads.items() if isinstance(heads, dict) else ()):
            out.setdefault(col, {"stage": spec.get("name") or spec.get("stage"), "head": str(head)})
    return {c: out[c] for c in out if c in columns}


class Extremes:
    """Per column, the ``n`` highest and lowest scored kept and rejected rows seen so far (ties: by uid)."""

    def __init__(self, columns: list[str], n: int):
        self.columns, self.n = list(columns), n
        self.rows: dict[tuple[str, str, bool], list[tuple[float, str, dict]]] = {
            (c, side, top): [] for c in self.columns for side, top in GRIDS}

    def add(self, t: pa.Table, kept: np.ndarray, stem: str) -> None:
        for col in self.columns:
            if col not in t.column_names:
                continue
            vals = pc.fill_null(t[col].cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
            scored = np.isfinite(vals)
            for side, mask in (("kept", kept & scored), ("rejected", ~kept & scored)):
                idx = np.flatnonzero(mask)
                if not len(idx):
                    continue
                for top in (True, False):
                    pick = idx if len(idx) <= self.n else idx[np.argpartition(
                        -vals[idx] if top else vals[idx], self.n - 1)[:self.n]]
                    self._merge((col, side, top), vals[pick], table_rows(t, pick, stem))

    def _merge(self, key, vals: np.ndarray, rows: list[dict]) -> None:
        top = key[2]
        have = self.rows[key] + [(float(v), r["uid"], r) for v, r in zip(vals, rows)]
        have.sort(key=lambda e: ((-e[0] if top else e[0]), e[1]))
        self.rows[key] = have[:self.n]

    def shown(self) -> list[dict]:
        return [r for rows in self.rows.values() for _, _, r in rows]


def section(heads: dict[str, dict], histograms: dict, thresholds: dict, extremes: Extremes) -> str:
    out = []
    for col, info in heads.items():
        hist = histograms.get(col)
        lines = thresholds.get(col, [])
        note = ", ".join(f"{escape(label)} = {v:.4g}" for label, v in lines) or "no threshold applied to this column"
        parts = [f'<div class="head" data-column="{escape(col)}"><h3>{escape(col)} '
                 f'<span class="muted">{escape(info["head"])}, stage {escape(str(info["stage"]))}</span></h3>']
        if hist is not None and hist.n:
            parts.append(f'<div class="hist" data-column="{escape(col)}" data-n="{hist.n}">'
                         + charts.histogram_svg(col, hist.edges, hist.kept, hist.rejected, lines)
                         + f'<p class="muted">{hist.n:,} scored rows, mean {hist.total / hist.n:.4g}; green kept, '
                           f"red rejected (by any stage); {note}</p></div>")
        for side, top in GRIDS:
            rows = extremes.rows[(col, side, top)]
            if not rows:
                continue
            title = f"{'highest' if top else 'lowest'} {col}, {side}"
            cards = "".join(h.card(r, _badge(r, side, col, v), data={"score": repr(v)}) for v, _, r in rows)
            parts.append(f'<h4>{escape(title)} <span class="muted">({len(rows)} of the run)</span></h4>'
                         f'<div class="grid" data-grid="head" data-column="{escape(col)}" data-side="{side}" '
                         f'data-order="{"highest" if top else "lowest"}">{cards}</div>')
        out.append("".join(parts) + "</div>")
    return "".join(out)


def _badge(row: dict, side: str, col: str, value: float) -> tuple[str, str]:
    if side == "kept":
        return "ok", f"{col} {value:.4g}"
    return "rej", f"{col} {value:.4g} · {row.get('reject_reason') or row.get('reject_stage')}"
