"""Recaption throughput on CPU: batched generation (16 images per call) vs one image at a time.

Bar (issue 8): captions/s batched >= 3x one-at-a-time, same model, same settings, same images.
Both figures come from the real stage (``Recaption.process_batch``: decode, prompt, processor,
``generate``, decode text), only ``gen_batch_size`` differs (16 vs 1). Models are the repo's
tiny random-weight configs (stages/models/configs/vlm), loaded from a local directory through
``from_pretrained``: BLIP (encoder-decoder style, fixed prompt, length buckets) and Qwen2-VL
(decoder-only, chat template, alt-text in the prompt, so batches are left-padded). Greedy decoding,
so the two runs must produce identical captions; the bench checks that too.

Rounds are interleaved (batched, single, batched, ...) so a change in machine load hits both; the
best round of each is reported, with process CPU seconds beside wall time.
The one-at-a-time reference runs on the first ``--single-rows`` images (it is slow); rates are per caption.
Run: ``python -m bench.recaption_batched [--rows 64] [--single-rows 16] [--tokens 16] [--rounds 2]``.
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402

COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "images", "coco")
SETUPS = {  # arch -> prompt template
    "blip": "a picture of",
    "qwen2_vl": "The alt-text says: {caption}. Describe the image.",
}


def pool(rows: int) -> tuple[pa.Table, str]:
    """Real COCO photos when ../shared/data is there, else `winnow sample` scenes; captions of varied length."""
    from winnow.pipeline.tools.sample import PROBLEMS, generate

    table, _ = generate(rows, seed=3, fractions={p: 0.0 for p in PROBLEMS})
    photos = sorted(glob.glob(os.path.join(COCO, "*.jpg")))
    if not photos:
        return table, "winnow-sample scenes"
    images = [open(photos[i % len(photos)], "rb").read() for i in range(rows)]
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    return table, f"{len(photos)} COCO photos"


def timed(stage, table) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = stage.process_batch(table)
    return time.perf_counter() - wall, time.process_time() - cpu, out["caption_synthetic"].to_pylist()


def main() -> None:
    import torch

    from winnow.stages.caption.recaption import Recaption
    from winnow.stages.models.tiny_vlm import build_tiny_vlm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--single-rows", type=int, default=16, help="rows for the (slow) one-at-a-time reference")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    table, source = pool(args.rows)
    print(f"recaption CPU bench: {args.rows} images ({source}), {args.tokens} new tokens, greedy, "
          f"torch threads={torch.get_num_threads()}, cores={os.cpu_count()}")
    root = tempfile.mkdtemp(prefix="winnow-recaption-bench-")
    for arch, prompt in SETUPS.items():
        path = build_tiny_vlm(arch, os.path.join(root, arch))
        common = {"model": path, "prompt": prompt, "max_new_tokens": args.tokens, "gpus": 0.0}
        batched = Recaption(gen_batch_size=16, **common)
        single = Recaption(gen_batch_size=1, **common)
        for stage in (batched, single):
            stage.ensure_setup()
            stage.process_batch(table.slice(0, 2))  # warm-up
        best = {"batched": (1e9, 1e9), "single": (1e9, 1e9)}
        captions = {}
        rows = {"batched": args.rows, "single": min(args.single_rows, args.rows)}
        for _ in range(args.rounds):
            for label, stage in (("batched", batched), ("single", single)):
                wall, cpu, caps = timed(stage, table.slice(0, rows[label]))
                best[label] = (min(best[label][0], wall / rows[label]), min(best[label][1], cpu / rows[label]))
                captions[label] = caps
        params = sum(p.numel() for p in batched.engine.model.parameters())
        rate = {k: 1 / v[0] for k, v in best.items()}
        same = captions["batched"][: rows["single"]] == captions["single"]
        print(f"\n{arch} (tiny random weights, {params / 1e6:.2f}M params, padding={batched.engine.padding})")
        for label, name in (("batched", "ours      batched x16  "), ("single", "reference one at a time")):
            print(f"  {name}: {rate[label]:8.1f} captions/s  ({rows[label]} images; per caption: wall "
                  f"{best[label][0] * 1e3:.0f} ms, cpu {best[label][1] * 1e3:.0f} ms)")
        print(f"  speedup {rate['batched'] / rate['single']:.1f}x wall, {best['single'][1] / best['batched'][1]:.1f}x "
              f"cpu (bar: >= 3x); identical captions on the shared rows: {same}")


if __name__ == "__main__":
    main()
