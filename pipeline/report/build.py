"""`winnow report RUN_DIR`: write RUN_DIR/report.html, the human view of a run (DESIGN.md §5).

One self-contained page (inline CSS, SVG charts, base64 thumbnails; no scripts, nothing fetched):
the funnel from stats.json, a histogram per score column with its thresholds, per embedding head its
histogram and its highest/lowest scored kept and rejected images (heads.py), the MetaCLIP entry-count
curve before/after balancing, duplicate groups as image strips and grids of kept and rejected images
per reason. Every section appears only when its data exists. The cost is one
streaming pass over the manifest's needed columns plus image reads for a bounded sample, so a run
of millions of rows gives a page of a few MB in seconds to minutes.
"""
from __future__ import annotations

from html import escape

import numpy as np
import pyarrow as pa

from winnow.pipeline.report import artifacts as arts
from winnow.pipeline.report import charts
from winnow.pipeline.report import heads as hd
from winnow.pipeline.report import html as h
from winnow.pipeline.report.images import fetch_rows, thumbnail
from winnow.pipeline.report.scan import KEPT_KEY, ManifestScanner, column_ranges, histogram_edges, score_columns
from winnow.stages import storage
from winnow.stages.errors import WinnowError

MAX_REASON_GRIDS = 40
MAX_CURVES = 3  # MetaCLIP 2 has a metadata group per language: show those with the most matches


def main(args) -> int:
    path = write_report(args.run_dir, output=getattr(args, "output", None),
                        per_grid=getattr(args, "per_grid", 12), sample_shards=getattr(args, "sample_shards", 4),
                        seed=getattr(args, "seed", 0), thumb_px=getattr(args, "thumb_px", 128))
    print(f"report: {path}")
    return 0


def write_report(run_dir: str, output: str | None = None, *, per_grid: int = 12, sample_shards: int = 4,
                 dup_groups: int = 10, dup_members: int = 6, thumb_px: int = 128, seed: int = 0) -> str:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    if not storage.isdir(run_dir):
        raise WinnowError(f"run directory {run_dir}: not found")
    if per_grid < 1 or sample_shards < 1 or thumb_px < 16:
        raise WinnowError("report: --per-grid and --sample-shards must be >= 1 and --thumb-px >= 16")
    stats_path = storage.join(run_dir, "stats.json")
    stats = arts.load_json(stats_path, required=True)
    arts.check_stats(stats, stats_path)
    pipeline = arts.load_json(storage.join(run_dir, "pipeline.json"), required=False)
    types = {s.get("name") or s.get("stage"): str(s.get("stage", "")) for s in arts.stage_specs(pipeline)}

    files = _manifest_files(run_dir)
    schema = _schema(files)
    cols = score_columns(schema) if schema else []
    thr = arts.thresholds(run_dir, pipeline, cols)
    ranges = column_ranges([p for _, p in files], cols)
    edges = {c: histogram_edges(*ranges[c], [v for _, v in thr[c]]) for c in cols if c in ranges}
    curves = arts.metaclip_curves(run_dir, pipeline)[:MAX_CURVES]
    has_entries = bool(schema and "metaclip_entries" in schema.names)
    stems = [s for s, _ in files]
    picked = _spread(stems, sample_shards)
    entry_groups = ([c["group"] for c in curves] or [None]) if has_entries else []
    heads = hd.head_columns(pipeline, cols)
    extremes = hd.Extremes(list(heads), per_grid)
    scan = ManifestScanner(per_grid, dup_groups, dup_members, seed, edges, entry_groups,
                           (extremes,)).scan(files, picked)
    scan.samples[KEPT_KEY] = scan.samples.get(KEPT_KEY, [])
    _attach_images(run_dir, scan, thumb_px, extremes.shown())

    if not curves and None in scan.entry_counts:
        curves = [{"group": None, "counts": scan.entry_counts[None], "t": arts.metaclip_t(pipeline),
                   "source": "manifest column metaclip_entries"}]
    sections = [
        ("funnel", "Funnel", charts.funnel_svg([{"name": n, **s} for n, s in stats["stages"].items()],
                                                int(stats["rows_in"]), int(stats["rows_kept"]))
         + h.funnel_table(stats, types)),
        ("scores", "Score distributions", _scores({c: v for c, v in scan.histograms.items() if c not in heads}, thr)),
        ("heads", "Embedding heads", hd.section(heads, scan.histograms, thr, extremes)),
        ("balance", "MetaCLIP balancing", "".join(_balance(c, scan.entry_realized.get(c["group"]), len(curves) > 1)
                                                    for c in curves)),
        ("duplicates", "Duplicate groups", _duplicates(scan.dup_groups, stats)),
        ("kept", "Kept samples", _grid("kept", scan.samples[KEPT_KEY], len(picked), len(stems))),
        ("rejected", "Rejected samples by reason", _rejected(stats, scan.samples, len(picked), len(stems))),
        ("config", "Run configuration", h.config_block(pipeline)),
    ]
    body = [("summary", "Summary", h.summary(stats))] + sections
    html = h.page("winnow curation report", storage.abspath(run_dir), body)
    out = output or storage.join(run_dir, "report.html")
    storage.write_bytes(html.encode("utf-8"), out)
    return out


def _manifest_files(run_dir: str) -> list[tuple[str, str]]:
    folder = storage.join(run_dir, "manifest")
    if not storage.isdir(folder):
        return []
    names = sorted(n for n in storage.listdir(folder) if n.endswith(".parquet") and ".tmp-" not in n)
    return [(n.removeprefix("part-").removesuffix(".parquet"), storage.join(folder, n)) for n in names]


def _spread(stems: list[str], k: int) -> set[str]:
    """Up to ``k`` shards evenly spread over the run (first and last included): samples see all of it."""
    if not stems:
        return set()
    return {stems[int(i)] for i in np.unique(np.linspace(0, len(stems) - 1, min(k, len(stems))).round())}


def _schema(files: list[tuple[str, str]]) -> pa.Schema | None:
    """The manifest's columns over all files; where files disagree on a type, the first file's wins."""
    fields: dict[str, pa.Field] = {}
    for _, path in files:
        try:
            schema = storage.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise WinnowError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        for f in schema:
            fields.setdefault(f.name, f)
    return pa.schema(list(fields.values())) if files else None


def _attach_images(run_dir: str, scan, thumb_px: int, more: list[dict] = ()) -> None:
    """Find bytes (and captions the manifest lacks) for every shown row; store thumbnails on the rows."""
    shown = [r for rows in scan.samples.values() for r in rows] + list(more)
    survivors = {}
    for uid, g in scan.dup_groups.items():
        shown.extend(g["members"])
        survivors[uid] = g["survivor"] = {"uid": uid}
    shown_uids = {r["uid"] for r in shown}
    wanted = {r["uid"]: r.get("stem") for r in shown} | {u: None for u in survivors if u not in shown_uids}
    found = fetch_rows(run_dir, wanted)
    for r in shown + list(survivors.values()):
        hit = found.get(r["uid"])
        for key in ("caption", "caption_synthetic"):
            if hit and r.get(key) is None and hit.get(key) is not None:
                r[key] = hit[key]
        r["thumb"], r["note"] = thumbnail(hit.get("image"), thumb_px) if hit else (None, "image not found in run dir")


def _scores(histograms: dict, thr: dict) -> str:
    out = []
    for col, hist in histograms.items():
        if not hist.n:
            continue
        lines = thr.get(col, [])
        note = ", ".join(f"{escape(label)} = {v:.4g}" for label, v in lines) or "no threshold configured"
        out.append(f'<div class="hist" data-column="{escape(col)}" data-n="{hist.n}"><h3>{escape(col)}</h3>'
                   + charts.histogram_svg(col, hist.edges, hist.kept, hist.rejected, lines)
                   + f'<p class="muted">{hist.n:,} scored rows, mean {hist.total / hist.n:.4g}; '
                     f'green kept, red rejected (by any stage); {note}</p></div>')
    return f'<div class="charts">{"".join(out)}</div>' if out else ""


def _balance(curve: dict, realized, several: bool) -> str:
    counts, t = curve["counts"], curve["t"]
    if not len(counts) or counts.sum() <= 0:
        return ""
    if realized is not None:
        size = max(len(counts), len(realized))
        counts, realized = np.pad(counts, (0, size - len(counts))), np.pad(realized, (0, size - len(realized)))
    matched = int((counts > 0).sum())
    text = f"{matched:,} entries matched, {int(counts.sum()):,} matches (counts from {escape(curve['source'])})"
    if t is not None:
        head = int((counts >= t).sum())  # p_e = 1 below t, t/count from t on
        text += (f"; t = {t:,.6g}: {head:,} head entries flattened to t, {matched - head:,} tail entries kept whole; "
                 f"expected matches after balancing {int(np.minimum(counts, t).sum()):,}")
    group = curve["group"]
    title = f"<h3>metadata group {escape(str(group))}</h3>" if several else ""
    return (f'<div class="balance" data-group="{escape(str(group))}">{title}{charts.balance_svg(counts, t, realized)}'
            f'<p class="muted balance-summary">{text}</p></div>')


def _duplicates(groups: dict, stats: dict) -> str:
    if not groups:
        return ""
    dup_rows = sum(n for st in stats["stages"].values() for r, n in st["rejected"].items() if r.startswith("dup:"))
    out = [f'<p class="muted">{dup_rows:,} rows rejected as duplicates in this run; {len(groups)} groups shown, '
           "each survivor (green border) followed by the rows removed as its duplicates.</p>"]
    out.append('<div class="strips">')
    for uid, g in sorted(groups.items()):
        cards = [h.card(g["survivor"], ("ok", "survivor"), "survivor")]
        cards += [h.card(m, ("rej", m.get("reject_reason") or "duplicate")) for m in g["members"]]
        out.append(f'<div class="strip" data-survivor="{escape(uid)}" data-duplicates="{g["n"]}">'
                   f'<div class="muted">survivor {escape(uid)}: {g["n"]:,} duplicate(s), showing '
                   f'{len(g["members"])}</div><div class="strip-row">{"".join(cards)}</div></div>')
    return "".join(out) + "</div>"


def _grid(kind: str, rows: list[dict], picked: int, total: int, stage: str = "", reason: str = "") -> str:
    if not rows:
        return ""
    attrs = f'data-grid="{kind}"' + (f' data-stage="{escape(stage)}" data-reason="{escape(reason)}"' if stage else "")
    badge = ("rej", reason) if kind == "rejected" else None
    cards = "".join(h.card(r, badge) for r in rows)
    return (f'<p class="muted">a uniform sample from {picked} of {total} shard(s)</p>' if kind == "kept" else "") + \
        f'<div class="grid" {attrs}>{cards}</div>'


def _rejected(stats: dict, samples: dict, picked: int, total: int) -> str:
    out, missing = [], []
    order = [(stage, reason, n) for stage, st in stats["stages"].items()
             for reason, n in sorted(st["rejected"].items(), key=lambda kv: (-kv[1], kv[0]))]
    for stage, reason, n in order:
        rows = samples.get((stage, reason), [])
        if not rows or len(out) >= MAX_REASON_GRIDS:
            missing.append(f"{escape(stage)} · {escape(reason)} ({n:,})")
            continue
        out.append(f'<h3>{escape(stage)} · {escape(reason)} <span class="muted">{n:,} rows, showing {len(rows)}'
                   f"</span></h3>{_grid('rejected', rows, picked, total, stage, reason)}")
    if missing:
        out.append(f'<p class="muted">not shown (no example in the {picked} sampled shard(s), or beyond '
                   f'{MAX_REASON_GRIDS} grids): {"; ".join(missing)}</p>')
    return "".join(out)
