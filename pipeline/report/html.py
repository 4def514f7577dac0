"""The report page: plain HTML + inline CSS/SVG, no scripts, and a CSP that forbids any network load.

Numbers that tests (and people's scripts) may want to read back carry ``data-*`` attributes with
the exact values from stats.json; the visible text shows the same values with thousands separators.
"""
from __future__ import annotations

import json
from html import escape

CAPTION_CHARS = 180
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;
color:#222;background:#f6f7f9}header{background:#1f2a37;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header .sub{opacity:.75;font-size:13px;word-break:break-all}nav{margin-top:8px}nav a{color:#9cc3ff;margin-right:14px;
text-decoration:none}main{padding:8px 28px 40px;max-width:1400px}section{background:#fff;border:1px solid #e3e6ea;
border-radius:8px;padding:14px 18px;margin:16px 0}h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:16px 0 6px}
.summary{display:flex;gap:12px;flex-wrap:wrap}.stat{background:#fff;border:1px solid #e3e6ea;border-radius:8px;
padding:10px 16px;min-width:130px}.stat .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.stat .v{font-size:22px;font-weight:600}.chart{width:100%;max-width:760px;height:auto;display:block}.chart.wide{max-width:980px}
.chart text{font-size:11px;fill:#333}.chart .lbl{font-size:12px}.chart .thr{font-size:11px;font-weight:600}
table{border-collapse:collapse;width:100%;max-width:980px;margin-top:10px}th,td{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left}th{font-size:12px;color:#555;background:#fafbfc}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.stage td{font-weight:600;background:#f3f6fa}tr.reason td.reason-name{padding-left:26px}.bar{display:inline-block;
height:8px;background:#d9534f;border-radius:2px;margin-left:8px;vertical-align:middle}.muted{color:#777;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}.grid{display:grid;
grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}.card{margin:0;background:#fafbfc;border:1px solid #e6e8eb;
border-radius:6px;padding:6px;font-size:12px;overflow:hidden}.card img,.noimg{width:100%;height:120px;object-fit:contain;
background:#eceef1;border-radius:4px;display:block}.noimg{display:flex;align-items:center;justify-content:center;
text-align:center;color:#a33;font-size:11px;padding:6px;background:repeating-linear-gradient(45deg,#f4e9e9,#f4e9e9 6px,
#fbf3f3 6px,#fbf3f3 12px)}.card p{margin:4px 0 0;word-wrap:break-word}.tag{display:inline-block;font-size:10px;
padding:0 4px;border-radius:3px;background:#e1e5ea;color:#333;margin-right:4px}.tag.syn{background:#e3dcf7;color:#4b2e99}
.tag.rej{background:#f7dcdc;color:#992e2e}.tag.ok{background:#d8f0e1;color:#1d6b3e}.strips{display:flex;flex-wrap:wrap;gap:12px}.strip{border:1px solid #e6e8eb;border-radius:6px;padding:6px;max-width:100%}
.strip-row{display:flex;gap:8px;overflow-x:auto;margin-top:4px}.strip-row .card{flex:0 0 160px}.strip-row .card.survivor{border:2px solid #2e9e5b}
details pre{background:#f3f4f6;padding:10px;border-radius:6px;overflow:auto;max-height:420px;font-size:12px}
"""


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _clip(text: str | None, limit: int = CAPTION_CHARS) -> str:
    if text is None or not str(text).strip():
        return f'<span class="muted">({"none" if text is None else "empty"})</span>'
    text = str(text)
    shown = text if len(text) <= limit else text[:limit] + "…"
    return f'<span title="{escape(text[:2000])}">{escape(shown)}</span>' if shown != text else escape(shown)


def card(row: dict, badge: tuple[str, str] | None = None, extra_class: str = "", data: dict | None = None) -> str:
    """One image with its alt-text, synthetic caption(s), decision and scores; ``data``: more data-* values."""
    uri, note = row.get("thumb"), row.get("note", "")
    img = (f'<img src="{uri}" alt="{escape(note)}" title="{escape(note)}">' if uri
           else f'<div class="noimg">{escape(note or "no image")}</div>')
    attrs = "".join(f' data-{k}="{escape(str(v))}"' for k, v in (data or {}).items())
    parts = [f'<figure class="card {extra_class}" data-uid="{escape(str(row.get("uid")))}"{attrs}>{img}<figcaption>']
    if badge:
        parts.append(f'<p><span class="tag {badge[0]}">{escape(badge[1])}</span></p>')
    parts.append(f'<p><span class="tag">alt</span>{_clip(row.get("caption"))}</p>')
    synthetic = row.get("caption_synthetic")
    for text in (synthetic if isinstance(synthetic, list) else [synthetic] if synthetic is not None else [])[:3]:
        parts.append(f'<p class="synthetic"><span class="tag syn">synthetic</span>{_clip(text)}</p>')
    scores = " · ".join(f"{escape(k)} {v:.3f}" for k, v in list((row.get("scores") or {}).items())[:4])
    meta = " · ".join(x for x in (escape(str(row.get("uid"))), escape(note) if uri else "", scores) if x)
    parts.append(f'<p class="muted">{meta}</p></figcaption></figure>')
    return "".join(parts)


def summary(stats: dict) -> str:
    n_in, kept = int(stats["rows_in"]), int(stats["rows_kept"])
    pct = f"{100 * kept / n_in:.1f}%" if n_in else "–"
    secs = stats.get("seconds")
    items = [("rows in", "rows-in", n_in), ("kept", "rows-kept", kept), ("rejected", "rows-rejected", n_in - kept)]
    out = ['<div class="summary">']
    for label, id_, value in items:
        out.append(f'<div class="stat"><div class="k">{label}</div><div class="v" id="{id_}" data-value="{value}">'
                   f"{value:,}</div></div>")
    out.append(f'<div class="stat"><div class="k">kept share</div><div class="v">{pct}</div></div>')
    if isinstance(secs, (int, float)):
        rate = f" · {n_in / secs:,.0f} rows/s" if secs > 0 else ""
        out.append(f'<div class="stat"><div class="k">wall time</div><div class="v">{secs:,.1f} s</div>'
                   f'<div class="muted">runner {escape(str(stats.get("runner", "?")))}{rate}</div></div>')
    out.append("</div>")
    return "".join(out)


def funnel_table(stats: dict, types: dict[str, str]) -> str:
    out = ['<table class="funnel" id="funnel-table"><thead><tr><th>stage</th><th>type</th><th class="num">rows in</th>'
           '<th class="num">kept</th><th class="num">rejected</th><th class="num">seconds</th><th class="num">rows/s</th>'
           "</tr></thead><tbody>"]
    for name, st in stats["stages"].items():
        rej = st["rejected"]
        total_rej = sum(rej.values())
        rate = st.get("rows_per_s")
        out.append(f'<tr class="stage" data-stage="{escape(name)}" data-rows-in="{st["rows_in"]}" '
                   f'data-kept="{st["kept"]}" data-rejected="{total_rej}"><td class="name"{_workers_title(st)}>'
                   f'{escape(name)}</td>'
                   f'<td>{escape(types.get(name, ""))}</td><td class="num rows-in">{_n(st["rows_in"])}</td>'
                   f'<td class="num kept">{_n(st["kept"])}</td><td class="num rejected">{_n(total_rej)}</td>'
                   f'<td class="num">{_n(st.get("seconds", ""))}</td>'
                   f'<td class="num">{f"{rate:,.0f}" if isinstance(rate, (int, float)) else "–"}</td></tr>')
        for reason, count in sorted(rej.items(), key=lambda kv: (-kv[1], kv[0])):
            share = count / st["rows_in"] if st["rows_in"] else 0.0
            out.append(f'<tr class="reason" data-stage="{escape(name)}" data-reason="{escape(reason)}" '
                       f'data-count="{count}"><td class="reason-name" colspan="2">{escape(reason)}'
                       f'<span class="bar" style="width:{max(2, round(240 * share))}px"></span></td><td></td><td></td>'
                       f'<td class="num count">{count:,}</td><td class="num muted" colspan="2">'
                       f"{100 * share:.1f}% of stage input</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _workers_title(st: dict) -> str:
    """Where a stage's Ray workers ran (stats.json ``workers``), as the stage name's tooltip."""
    places = sorted({f"{w.get('node', '?')} {w.get('device', '?')}" for w in st.get("workers") or []})
    return f' title="{escape("ran on: " + ", ".join(places))}"' if places else ""


def config_block(pipeline: dict | None) -> str:
    if not pipeline:
        return '<p class="muted">no pipeline.json in this run directory</p>'
    inputs = pipeline.get("inputs") or []
    shown = {"config": pipeline.get("config"), "runner": pipeline.get("runner"), "models": pipeline.get("models"),
             "versions": pipeline.get("versions"),
             "inputs": inputs[:5] + ([f"... {len(inputs) - 5} more"] if len(inputs) > 5 else [])}
    text = json.dumps(shown, indent=2, default=str)
    return (f'<p class="muted">{len(inputs):,} input shard(s)</p><details><summary>resolved config, models, '
            f"versions</summary><pre>{escape(text)}</pre></details>")


def page(title: str, run_dir: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (id, heading, inner html); empty ones are left out (every section is optional)."""
    sections = [s for s in sections if s[2]]
    nav = "".join(f'<a href="#{sid}">{escape(head)}</a>' for sid, head, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(head)}</h2>{inner}</section>' for sid, head, inner in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{escape(title)}</h1>"
            f'<div class="sub">{escape(run_dir)}</div><nav>{nav}</nav></header><main>{body}</main></body></html>\n')
