"""Recaption throughput on one CUDA GPU: a VLM-sized random model, batched vs one image at a time.

Bar (issue 8): captions/s on one GPU (H100 in the README figures) for a ~2B-parameter
image-text-to-text model generating 64 new tokens, batched vs one-at-a-time. The model is the repo's
Qwen2-VL config scaled to Qwen2-VL-2B's shapes (1.5B-parameter language model, 32-layer 1280-wide
vision tower, 151,936-token vocabulary) with RANDOM weights in bf16, saved to a local directory and
loaded through the stage's real path (``AutoModelForImageTextToText.from_pretrained``). Images are
resized by the Qwen2-VL processor to at most 448x448 (<= 256 visual tokens each); the prompt carries
the alt-text, so batches are left-padded. EOS is a single id among 151,936, so random weights run
(nearly) every caption to the full 64 tokens.

Both figures come from ``Recaption.process_batch`` (decode, processor, generate, detokenise); only
``gen_batch_size`` differs. The one-at-a-time reference runs on fewer images (it is slow); rates are
per caption. Without CUDA this prints why and exits 0.
Run: ``python -m bench.recaption_gpu [--rows 256] [--single-rows 16] [--batch 64]``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Qwen2-VL-2B-Instruct's shapes (config.json on the hub), random weights.
QWEN2_VL_2B = {
    "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16},
    "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                    "max_position_embeddings": 32768, "initializer_range": 0.02,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                        "mrope_section": [16, 24, 24]}},
    "tie_word_embeddings": True,
}
IMAGES = {"min_pixels": 56 * 56, "max_pixels": 448 * 448}
PROMPT = "The alt-text of this image is: {caption}. Describe the image in detail."


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--single-rows", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "winnow-qwen2vl-2b-random"))
    ap.add_argument("--smoke", action="store_true", help="check this script on CPU with the tiny config")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.single_rows, args.batch, args.tokens = 8, 2, 4, 4
        args.model_dir = tempfile.mkdtemp(prefix="winnow-recaption-gpu-smoke-")
    elif not torch.cuda.is_available():
        print("recaption GPU bench: no CUDA GPU on this machine, skipped (run it on a GPU host)")
        return 0

    from winnow.pipeline.tools.sample import PROBLEMS, generate
    from winnow.stages.caption.recaption import Recaption
    from winnow.stages.models.tiny_vlm import build_tiny_vlm

    t0 = time.perf_counter()
    if args.smoke:
        path = build_tiny_vlm("qwen2_vl", args.model_dir, image_overrides=IMAGES)
    else:
        path = build_tiny_vlm("qwen2_vl", args.model_dir, overrides=QWEN2_VL_2B, device="cuda", dtype="bfloat16",
                              image_overrides=IMAGES)
        torch.cuda.empty_cache()
    print(f"model built / found in {time.perf_counter() - t0:.0f}s at {path}")
    table, _ = generate(args.rows, seed=3, fractions={p: 0.0 for p in PROBLEMS})
    common = {"model": path, "prompt": PROMPT, "max_new_tokens": args.tokens, "gpus": 1.0,
              "device": "cpu" if args.smoke else "cuda"}
    batched = Recaption(gen_batch_size=args.batch, **common)
    batched.ensure_setup()
    single = Recaption(gen_batch_size=1, **common)
    single.engine = batched.engine  # same weights in memory: one copy of the model on the GPU
    single.settings, single.gen_params, single._ready = batched.settings, batched.gen_params, True
    engine = batched.engine
    params = sum(p.numel() for p in engine.model.parameters())
    device = "CPU smoke test" if args.smoke else torch.cuda.get_device_name(0)
    print(f"recaption GPU bench: {device}, random Qwen2-VL-2B-shaped model "
          f"({params / 1e9:.2f}B params, {engine.dtype}), {args.tokens} new tokens, greedy, images <= 448x448")
    batched.process_batch(table.slice(0, min(args.batch, args.rows)))  # warm-up (kernels, allocator)
    rates, captions = {}, {}
    sync = torch.cuda.synchronize if not args.smoke else (lambda: None)
    for label, stage, rows in (("batched", batched, args.rows), ("single", single, min(args.single_rows, args.rows))):
        sync()
        t0 = time.perf_counter()
        out = stage.process_batch(table.slice(0, rows))
        sync()
        rates[label] = rows / (time.perf_counter() - t0)
        captions[label] = out["caption_synthetic"].to_pylist()
        failed = out["caption_error"].drop_null().to_pylist()
        if failed:
            print(f"  {label}: {len(failed)} rows failed, e.g. {failed[0]}")
    shared = min(args.single_rows, args.rows)
    agree = sum(a == b for a, b in zip(captions["batched"][:shared], captions["single"]))
    print(f"  ours      batched x{args.batch:<4}: {rates['batched']:8.2f} captions/s ({args.rows} images)")
    print(f"  reference one at a time : {rates['single']:8.2f} captions/s ({shared} images)")
    peak = 0.0 if args.smoke else torch.cuda.max_memory_allocated() / 2**30
    print(f"  speedup {rates['batched'] / rates['single']:.1f}x; peak GPU memory {peak:.1f} GiB; "
          f"greedy captions identical on {agree}/{shared} "
          "shared rows (bf16 kernels differ with batch shape, so random-weight argmax ties can flip)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
