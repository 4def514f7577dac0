"""The demo's scorecard: each planted problem against the stage meant to catch it (recall and precision)."""
from __future__ import annotations

import pyarrow as pa

# planted problem -> (what catching it looks like, human label)
CATCHERS = {
    "corrupt_image": (lambda s, r: (s == "download" and r != "empty_body") or r.startswith("decode:")
                      or r == "image_undecodable", "not an image / undecodable"),
    "zero_bytes": (lambda s, r: r in ("empty_body", "image_empty"), "empty body"),
    "tiny_image": (lambda s, r: r in ("image_too_small", "download:too_small"), "image_too_small"),
    "extreme_aspect": (lambda s, r: r == "aspect_ratio", "aspect_ratio"),
    "empty_caption": (lambda s, r: r == "caption_empty", "caption_empty"),
    "long_caption": (lambda s, r: r == "caption_too_long", "caption_too_long"),
    "non_english": (lambda s, r: r.startswith("language:"), "language:*"),
    "exact_duplicate": (lambda s, r: r == "dup:image", "dup:image"),
    "near_duplicate": (lambda s, r: r == "dup:phash", "dup:phash"),
    "watermark": (lambda s, r: r.startswith("filter:watermark "), "watermark head"),
    "mismatched_caption": (lambda s, r: r == "below_keep_top:dfn_score", "dfn score (keep top 75%)"),
}


def scorecard(manifest: pa.Table, truth: pa.Table) -> list[dict]:
    decision = {u: (s or "", r or "") for u, s, r in zip(manifest["uid"].to_pylist(),
                                                      manifest["reject_stage"].to_pylist(),
                                                      manifest["reject_reason"].to_pylist())}
    planted: dict[str, set] = {k: set() for k in CATCHERS}
    for uid, problem, matches in zip(truth["uid"].to_pylist(), truth["problem"].to_pylist(),
                                     truth["caption_matches"].to_pylist()):
        if problem:
            planted[problem].add(uid)
        if not matches:
            planted["mismatched_caption"].add(uid)
    rows = []
    for problem, (caught_by, label) in CATCHERS.items():
        flagged = {u for u, (s, r) in decision.items() if (s or r) and caught_by(s, r)}
        uids = planted[problem]
        if not uids and not flagged:
            continue
        caught = uids & flagged
        elsewhere = {u for u in uids - caught if decision.get(u, ("", ""))[0]}
        rows.append({"problem": problem, "catcher": label, "planted": len(uids), "caught": len(caught),
                     "rejected_elsewhere": len(elsewhere), "flagged": len(flagged),
                     "recall": round(len(caught) / len(uids), 3) if uids else None,
                     "precision": round(len(caught) / len(flagged), 3) if flagged else None})
    return rows


def print_scorecard(rows: list[dict]) -> None:
    print(f"{'planted problem':<20} {'caught by':<28} {'planted':>7} {'caught':>7} {'recall':>7} {'precision':>9}"
          f" {'rejected elsewhere':>18}")
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        precision = "-" if r["precision"] is None else f"{r['precision']:.2f}"
        print(f"{r['problem']:<20} {r['catcher']:<28} {r['planted']:>7} {r['caught']:>7} {recall:>7} {precision:>9}"
              f" {r['rejected_elsewhere']:>18}")
