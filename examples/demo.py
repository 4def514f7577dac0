"""`make demo`: the whole product, end to end, offline, on one machine, in a few minutes.

1. `winnow sample` makes a pool with planted problems, watermark-like overlays and mismatched captions
   (ground truth kept aside);
2. `winnow train-dfn` trains a tiny filter CLIP on a separate well-captioned set (the DFN recipe);
3. `winnow train-head` trains a watermark judge on that CLIP's embeddings of a few hundred labelled rows
   (examples/demo_heads.py);
4. MetaCLIP metadata is derived from the sample's own vocabulary; a tiny random-weight VLM is built;
5. the pool is served by an HTTP server on 127.0.0.1 and `winnow run` runs download -> basic filter ->
   dedup -> DFN score and watermark judge (one encoder pass) -> filter (judge's threshold, DFN keep top 75%)
   -> MetaCLIP balancing -> recaption on an embedded local Ray, writing manifests, the kept set and report.html;
6. the manifest is scored against the ground truth: how much of each planted problem was caught.

Sizes via environment: WINNOW_DEMO_ROWS (default 2000), WINNOW_DEMO_DFN_STEPS (default 150),
WINNOW_DEMO_LABELLED (default 600), WINNOW_DEMO_OUT.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from examples.demo_eval import print_scorecard, scorecard
from examples.demo_heads import KEEP_WHERE, train_watermark_head
from examples.demo_server import ImageServer
from winnow.pipeline.tools.sample import COLORS, PROBLEMS, SHAPES, generate

ROWS = int(os.environ.get("WINNOW_DEMO_ROWS", "2000"))
DFN_STEPS = int(os.environ.get("WINNOW_DEMO_DFN_STEPS", "150"))
LABELLED = int(os.environ.get("WINNOW_DEMO_LABELLED", "600"))
# A tiny ResNet CLIP (stages/models/configs/winnow-tiny-rn.json) at 128 px: the 64 px tiny ViT is faster
# but its embeddings barely see a watermark (the judge's held-out AUC ~0.65 against ~0.9 here).
DFN_ARCH = "winnow-tiny-rn"
WATERMARKED = 0.08
# Part of the filter CLIP's training set is watermarked and its alt-text says so, as some web alt-text
# does: a CLIP never told about watermarks encodes them weakly (judge AUC ~0.86 against ~0.92, measured).
HQ_WATERMARKED = 0.3
OUT = os.path.abspath(os.environ.get("WINNOW_DEMO_OUT", "demo_out"))


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def winnow(*args: str) -> None:
    """Run the real CLI, as a user would; stop the demo if it fails."""
    cmd = [sys.executable, "-m", "winnow.pipeline.cli", *args]
    print("$ winnow " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def metadata_from_vocabulary(path: str) -> int:
    """MetaCLIP-style metadata for this pool: colours, shapes, colour+shape phrases, scene words."""
    entries = list(COLORS) + SHAPES + [f"{c} {s}" for c in COLORS for s in SHAPES]
    entries += ["photo", "illustration", "picture", "background", "backdrop", "drawn", "simple"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return len(entries)


def url_list(pool_dir: str, urls_dir: str, base_url: str) -> dict[str, bytes]:
    """Turn the sample's shards into (uid, url, caption) shards; returns the bytes the server will serve."""
    images: dict[str, bytes] = {}
    os.makedirs(urls_dir, exist_ok=True)
    for name in sorted(os.listdir(pool_dir)):
        if not name.endswith(".parquet"):
            continue
        table = pq.read_table(os.path.join(pool_dir, name))
        uids = table["uid"].to_pylist()
        images.update(zip(uids, table["image"].to_pylist()))
        urls = pa.array([f"{base_url}/img/{u}" for u in uids])
        pq.write_table(pa.table({"uid": table["uid"], "url": urls, "caption": table["caption"]}),
                       os.path.join(urls_dir, name))
    return images


def training_set(rows: int) -> pa.Table:
    """The filter CLIP's training pairs: no planted problems; watermarked images say so in their caption."""
    samples, truth = generate(rows, seed=101, fractions={**{k: 0.0 for k in PROBLEMS}, "watermark": HQ_WATERMARKED})
    captions = [("watermarked picture: " if p == "watermark" else "") + c
                for c, p in zip(samples["caption"].to_pylist(), truth["problem"].to_pylist())]
    return samples.set_column(samples.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))


def pipeline_yaml(path: str, urls_dir: str, dfn_ckpt: str, heads: dict, metadata: str, vlm_dir: str) -> None:
    spec = {
        "input": urls_dir,
        "output": os.path.join(OUT, "run"),
        "seed": 0,
        "write_kept": True,
        "stages": [
            {"stage": "download", "allow_private_networks": True, "timeout": 10.0, "threads": 16},
            {"stage": "basic_filter", "max_chars": 2000},
            {"stage": "dedup_image"},
            {"stage": "dedup_phash", "radius": 6},
            {"stage": "dfn", "model": f"open_clip:{DFN_ARCH}@{dfn_ckpt}", "keep_top": 0.0, "heads": heads,
             "embeddings_dir": "embeddings", "cpus": 1.0},
            {"stage": "filter", "name": "quality", "keep_where": KEEP_WHERE,
             "keep_top": {"column": "dfn_score", "fraction": 0.75}},
            {"stage": "metaclip", "metadata": metadata, "target_fraction": 0.8},
            {"stage": "recaption", "model": vlm_dir, "max_new_tokens": 12, "gpus": 0.0,
             "prompt": ""},
        ],
    }
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, sort_keys=False)


def main() -> int:
    t0 = time.perf_counter()
    os.makedirs(OUT, exist_ok=True)
    pool = os.path.join(OUT, "pool")
    step(f"1/6 generate a pool of {ROWS} pairs with planted problems (20% mismatched captions, "
         f"{WATERMARKED:.0%} watermarked)")
    winnow("sample", "--output", pool, "--rows", str(ROWS), "--shards", "4", "--seed", "0", "--mismatch", "0.2",
           "--watermark", str(WATERMARKED))

    step("2/6 train a filter CLIP (DFN) on a separate well-captioned set")
    hq_dir = os.path.join(OUT, "hq")
    os.makedirs(hq_dir, exist_ok=True)
    pq.write_table(training_set(1500), os.path.join(hq_dir, "hq.parquet"))
    dfn_ckpt = os.path.join(OUT, "models", "dfn-tiny.pt")
    winnow("train-dfn", "--data", hq_dir, "--model", f"open_clip:{DFN_ARCH}", "--output", dfn_ckpt,
           "--steps", str(DFN_STEPS))

    step(f"3/6 train a watermark judge on the filter CLIP's embeddings of {LABELLED} labelled rows")
    head = train_watermark_head(winnow, os.path.join(OUT, "judges"), f"open_clip:{DFN_ARCH}@{dfn_ckpt}", LABELLED)

    step("4/6 derive MetaCLIP metadata from the pool's vocabulary; build a tiny random-weight captioner")
    metadata = os.path.join(OUT, "metadata.json")
    print(f"metadata: {metadata_from_vocabulary(metadata)} entries")
    from winnow.stages.models.tiny_vlm import build_tiny_vlm

    vlm_dir = build_tiny_vlm("blip", os.path.join(OUT, "models", "tiny-blip-RANDOM-WEIGHTS"))
    print(f"captioner: {vlm_dir} (tiny, random weights: its captions are noise; use a real VLM id in production)")

    step("5/6 serve the pool on 127.0.0.1 and run the pipeline on an embedded local Ray")
    with ImageServer({}) as server:
        server_images = url_list(pool, os.path.join(OUT, "urls"), server.base_url)
        server.images.update(server_images)
        yaml_path = os.path.join(OUT, "demo.yaml")
        pipeline_yaml(yaml_path, os.path.join(OUT, "urls"), dfn_ckpt, {"watermark": head}, metadata, vlm_dir)
        print(f"serving {len(server_images)} images at {server.base_url}; pipeline: {yaml_path}")
        winnow("run", yaml_path)

    step("6/6 what was caught, against the sample's ground truth")
    run_dir = os.path.join(OUT, "run")
    manifest = pq.read_table(os.path.join(run_dir, "manifest"))
    truth = pq.read_table(os.path.join(pool, "ground_truth"))
    rows = scorecard(manifest, truth)
    print_scorecard(rows)
    kept = int(pc.sum(pc.is_null(manifest["reject_stage"])).as_py())
    print(f"\n{manifest.num_rows} rows in, {kept} kept, in {time.perf_counter() - t0:.0f}s")
    print(f"manifest: {run_dir}/manifest/   kept set: {run_dir}/kept/   stats: {run_dir}/stats.json")
    print(f"report:   {run_dir}/report.html")
    with open(os.path.join(OUT, "scorecard.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":  # img2dataset uses spawn: the entry point must be guarded
    sys.exit(main())
