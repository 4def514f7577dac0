"""Inline SVG charts for the report: no JavaScript and nothing fetched, so the page works offline.

Each function returns one ``<svg>`` element scaled by its viewBox (it stretches to the column
width). Hover titles (``<title>``) carry the exact numbers without needing scripts.
"""
from __future__ import annotations

import math
from html import escape

import numpy as np

KEPT = "#2e9e5b"
REJECTED = "#d9534f"
BEFORE = "#3b6fd4"
INK = "#333"
GRID = "#e4e4e4"


def _fmt(v: float) -> str:
    return f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:.4g}"


def _power_label(p: int) -> str:
    """10**p compactly: 1, 10, 100, 1k, 10k, 100k, 1M, ..."""
    for exp, suffix in ((9, "G"), (6, "M"), (3, "k")):
        if p >= exp:
            return f"{10 ** (p - exp)}{suffix}"
    return str(10 ** p)


def funnel_svg(stages: list[dict], rows_in: int, rows_kept: int) -> str:
    """One bar per stage, as wide as the rows it saw: kept part green, rejected part red."""
    label_w, bar_w, text_w, row_h, pad = 150, 420, 330, 30, 8
    rows = stages + [{"name": "kept in the end", "rows_in": rows_kept, "kept": rows_kept, "final": True}]
    height = pad * 2 + row_h * len(rows)
    scale = bar_w / max(rows_in, 1)
    out = [f'<svg class="chart wide" data-chart="funnel" viewBox="0 0 {label_w + bar_w + text_w} {height}" '
           f'role="img" aria-label="rows per stage">']
    for i, st in enumerate(rows):
        y = pad + i * row_h
        name = escape(st["name"])
        n_in, kept = int(st["rows_in"]), int(st["kept"])
        rej = n_in - kept
        out.append(f'<text x="{label_w - 8}" y="{y + row_h / 2 + 4}" text-anchor="end" class="lbl">{name}</text>')
        kw, rw = kept * scale, rej * scale
        out.append(f'<rect x="{label_w}" y="{y + 4}" width="{kw:.2f}" height="{row_h - 8}" fill="{KEPT}">'
                   f'<title>{name}: {kept:,} kept</title></rect>')
        if rej:
            out.append(f'<rect x="{label_w + kw:.2f}" y="{y + 4}" width="{max(rw, 1):.2f}" height="{row_h - 8}" '
                       f'fill="{REJECTED}"><title>{name}: {rej:,} rejected</title></rect>')
        text = f"{kept:,} rows" if st.get("final") else f"{n_in:,} in → {kept:,} kept, {rej:,} rejected"
        out.append(f'<text x="{label_w + bar_w + 10}" y="{y + row_h / 2 + 4}" class="val">{text}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_svg(column: str, edges: np.ndarray, kept: np.ndarray, rejected: np.ndarray,
                  thresholds: list[tuple[str, float]]) -> str:
    """Stacked histogram (kept below, rejected above) with each threshold drawn as a dashed line."""
    w, ml, mr, mb = 560, 52, 16, 34
    mt = 12 + 14 * max(len(thresholds), 1)  # room above the bars for one label per threshold
    h = mt + 170 + mb
    pw, ph = w - ml - mr, h - mt - mb
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo or 1.0
    top = max(int((kept + rejected).max()) if len(kept) else 0, 1)

    def x(v: float) -> float:
        return ml + (v - lo) / span * pw

    def y(c: float) -> float:
        return mt + ph - c / top * ph

    out = [f'<svg class="chart" data-chart="histogram" data-column="{escape(column)}" viewBox="0 0 {w} {h}" '
           f'role="img" aria-label="histogram of {escape(column)}">']
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="{INK}"/>')
    for frac in (0.5, 1.0):
        yy = y(top * frac)
        out.append(f'<line x1="{ml}" y1="{yy:.1f}" x2="{ml + pw}" y2="{yy:.1f}" stroke="{GRID}"/>'
                   f'<text x="{ml - 4}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{_fmt(round(top * frac))}</text>')
    for i in range(len(kept)):
        x0, x1 = x(edges[i]), x(edges[i + 1])
        bw = max(x1 - x0 - 0.6, 0.6)
        k, r = int(kept[i]), int(rejected[i])
        tip = f"[{edges[i]:.4g}, {edges[i + 1]:.4g}): {k:,} kept, {r:,} rejected"
        if k:
            out.append(f'<rect x="{x0:.2f}" y="{y(k):.2f}" width="{bw:.2f}" height="{y(0) - y(k):.2f}" '
                       f'fill="{KEPT}"><title>{tip}</title></rect>')
        if r:
            out.append(f'<rect x="{x0:.2f}" y="{y(k + r):.2f}" width="{bw:.2f}" height="{y(k) - y(k + r):.2f}" '
                       f'fill="{REJECTED}"><title>{tip}</title></rect>')
    for t in np.linspace(lo, hi, 5):
        out.append(f'<text x="{x(t):.1f}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{t:.3g}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{h - 2}" text-anchor="middle" class="lbl">{escape(column)}</text>')
    for j, (label, value) in enumerate(thresholds):
        xx = x(min(max(value, lo), hi))
        out.append(f'<line class="threshold" data-value="{value!r}" x1="{xx:.2f}" y1="{mt - 2}" x2="{xx:.2f}" '
                   f'y2="{mt + ph}" stroke="{INK}" stroke-width="1.5" stroke-dasharray="5 3">'
                   f'<title>{escape(label)} = {value:.6g}</title></line>')
        anchor = "end" if xx > ml + pw * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{xx + dx:.2f}" y="{mt - 6 - 14 * (len(thresholds) - 1 - j)}" text-anchor="{anchor}" class="thr">'
                   f'{escape(label)} = {value:.4g}</text>')
    out.append("</svg>")
    return "".join(out)


def _log_ranks(n: int, points: int = 400) -> np.ndarray:
    """About ``points`` ranks spaced evenly on a log axis: a 500k-entry curve stays a few KB."""
    return np.unique(np.round(np.logspace(0, math.log10(max(n, 1)), points)).astype(np.int64)) - 1


def balance_svg(counts: np.ndarray, t: float | None, realized: np.ndarray | None) -> str:
    """Entry counts sorted descending (log-log), before and after balancing.

    ``counts`` and ``realized`` are aligned per entry; entries are ranked by ``counts``. After
    balancing an entry expects min(count, t) rows: the head is flattened to t, the tail is kept.
    """
    order = np.argsort(-counts, kind="stable")
    before = counts[order]
    n = int((before > 0).sum())
    before = before[:n]
    w, h, ml, mr, mt, mb = 560, 270, 44, 16, 34, 38  # the legend sits in the top margin, off the curves
    pw, ph = w - ml - mr, h - mt - mb
    ymax = math.log10(max(float(before.max()) if n else 1.0, 10.0)) * 1.05
    xmax = math.log10(max(n, 10))

    def x(rank: float) -> float:
        return ml + math.log10(rank) / xmax * pw

    def y(c: float) -> float:
        return mt + ph - math.log10(max(c, 1.0)) / ymax * ph

    ranks = _log_ranks(n)
    out = [f'<svg class="chart" data-chart="metaclip" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="entry counts before and after balancing">']
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="{INK}"/>'
               f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="{INK}"/>')
    for p in range(0, int(ymax) + 1):
        out.append(f'<line x1="{ml}" y1="{y(10 ** p):.1f}" x2="{ml + pw}" y2="{y(10 ** p):.1f}" stroke="{GRID}"/>'
                   f'<text x="{ml - 4}" y="{y(10 ** p) + 4:.1f}" text-anchor="end" class="tick">{_power_label(p)}</text>')
    for p in range(0, int(xmax) + 1):
        out.append(f'<text x="{x(10 ** p):.1f}" y="{mt + ph + 15}" text-anchor="middle" class="tick">{_power_label(p)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{h - 4}" text-anchor="middle" class="lbl">'
               f'entry rank (by matches before balancing)</text>')

    def line(values: np.ndarray, color: str, cls: str, dash: str = "") -> str:
        pts = " ".join(f"{x(r + 1):.1f},{y(float(values[r])):.1f}" for r in ranks)
        return (f'<polyline class="{cls}" points="{pts}" fill="none" stroke="{color}" stroke-width="2"'
                f'{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>')

    if n:
        out.append(line(before, BEFORE, "before"))
        if realized is not None:
            real = realized[order][:n]
            out.append("".join(f'<circle cx="{x(r + 1):.1f}" cy="{y(float(real[r])):.1f}" r="1.6" fill="#e08a1e"/>'
                               for r in ranks if real[r] > 0))
        if t is not None:
            out.append(line(np.minimum(before, t), KEPT, "after", "6 3"))
            # below the line at the left: there the curve is above t (the head), so the label stays clear
            out.append(f'<text x="{ml + 6}" y="{min(y(t) + 14, mt + ph - 4):.1f}" class="thr">t = {t:,.6g}</text>')
    legend = [(BEFORE, "before")]
    if t is not None:
        legend.append((KEPT, "after, expected: min(count, t)"))
    if realized is not None:
        legend.append(("#e08a1e", "after, realized (kept rows)"))
    lx = ml
    for color, text in legend:
        out.append(f'<rect x="{lx}" y="8" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="17" class="tick">{text}</text>')
        lx += 24 + 5.8 * len(text)
    out.append("</svg>")
    return "".join(out)
