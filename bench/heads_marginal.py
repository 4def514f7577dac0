"""The marginal cost of embedding heads inside clip_score on CPU: the same engine on the same COCO photos
with no head and with three heads (aesthetic-v2 MLP, nsfw-laion, a `winnow train-head` linear head).

The heads have their published shapes (768-d input, as on OpenAI ViT-L/14) with random weights, loaded
through the real spec path (saved in their published layouts, ``;model=`` naming the bench's model).
The default encoder is ViT-B/32 with its final projection widened to 768 (registered here as
``ViT-B-32-embed768``): the towers cost what ViT-B/32's cost, the cheapest production CLIP, so the
heads' share is as large as it gets outside toy models; ``--model open_clip:ViT-L-14`` runs the heads'
own model (768-d already). One engine serves both configurations (its ``heads`` swapped between
passes), passes interleave (A B, B A, A B, ...) so a shared machine's load falls on both alike, and
the figure is the median of the per-round ratios, of wall time and of this process's CPU time (the
steadier of the two when other jobs share the cores), beside the best-of rates.

    python -m bench.heads_marginal [--model open_clip:ViT-B-32] [--images 128] [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from bench.clip_score_cpu import load_pairs

BAR = 0.05  # heads may make clip_score at most 5% slower
DIM = 768  # the published heads' input


def embed_model(spec: str, dim: int, folder: str) -> str:
    """``spec`` if its embedding is ``dim`` wide, else the same architecture with a ``dim``-wide projection."""
    import open_clip

    from winnow.stages.models import clip as models

    arch = models.parse_spec(spec).arch
    cfg = open_clip.get_model_config(arch)
    if cfg["embed_dim"] == dim:
        return spec
    name = f"{arch}-embed{dim}"
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump({**cfg, "embed_dim": dim}, f)
    open_clip.add_model_config(folder)
    return f"open_clip:{name}"


def head_specs(model: str, dim: int, folder: str) -> dict[str, str]:
    """Random weights of the three heads saved in their published (or train-head) layouts."""
    import torch

    from winnow.stages.models import heads as H

    torch.manual_seed(0)
    files = {"aesthetic": ("aesthetic-v2", H.build("aesthetic-v2", dim).state_dict()),
             "nsfw": ("nsfw-laion", H.build("nsfw-laion", dim).state_dict()),
             "mine": ("winnow", {"format": H.FORMAT, "model": model, "dim": dim, "task": "binary", "hidden": 0,
                                 "state_dict": H.build("winnow", dim).state_dict()})}
    specs = {}
    for col, (kind, blob) in files.items():
        path = os.path.join(folder, f"{col}.pt")
        torch.save(blob, path)
        specs[col] = f"head:{kind}@{path};model={model}"
    return specs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="open_clip:ViT-B-32")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--workers", type=int, default=1, help="decode threads")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved passes of each configuration")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from winnow.stages.filter.clip_engine import ClipEngine
    from winnow.stages.models import heads as H

    torch.set_num_threads(args.threads)
    images, captions = load_pairs(args.images)
    print(f"clip_score on CPU with and without 3 heads (aesthetic-v2, nsfw-laion, winnow linear; {DIM}-d), "
          f"{args.model} towers, random weights, {len(images)} COCO photos + captions, batch {args.batch}, "
          f"torch threads {args.threads}, {args.rounds} interleaved rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="winnow-heads-bench-") as folder:
        model = embed_model(args.model, DIM, folder)
        print(f"  model {model}", flush=True)
        heads = {col: (H.load_head(spec), "score") for col, spec in head_specs(model, DIM, folder).items()}
        engine = ClipEngine({"score": model}, device="cpu", model_batch=args.batch, threads=args.workers,
                            allow_random=True)
        engine.setup()
        configs = {"none": {}, "heads": heads}

        def one_pass(name: str):
            engine.heads = configs[name]
            t0, c0 = time.perf_counter(), time.process_time()
            res = engine.score(images, captions)
            return time.perf_counter() - t0, time.process_time() - c0, res

        for name in configs:  # warm-up: allocator, thread pools, first-call costs
            engine.heads = configs[name]
            engine.score(images[: args.batch], captions[: args.batch])
        times: dict[str, list[float]] = {"none": [], "heads": []}
        cpu: dict[str, list[float]] = {"none": [], "heads": []}
        last = {}
        for r in range(args.rounds):
            for name in (("none", "heads") if r % 2 == 0 else ("heads", "none")):
                seconds, cpu_s, last[name] = one_pass(name)
                times[name].append(seconds)
                cpu[name].append(cpu_s)
            (a, b), (ca, cb) = (times["none"][-1], times["heads"][-1]), (cpu["none"][-1], cpu["heads"][-1])
            print(f"  round {r + 1}: no heads {len(images) / a:7.1f} img/s, 3 heads {len(images) / b:7.1f} img/s "
                  f"(time ratio {b / a:.3f}, CPU-time ratio {cb / ca:.3f})", flush=True)
        scores = last["heads"].scores
        assert np.array_equal(scores["score"], last["none"].scores["score"], equal_nan=True)  # heads change no score
        assert all(np.isfinite(scores[c]).all() for c in heads)
        emb = np.asarray(torch.nn.functional.normalize(torch.randn(args.batch, DIM), dim=-1).half())
        alone, alone_cpu = float("inf"), float("inf")  # the heads alone on one engine batch, best of 20
        for _ in range(21):  # (a shared machine's stalls hit single calls of a few ms hard: the best is the cost)
            t0, c0 = time.perf_counter(), time.process_time()
            for head, _ in heads.values():
                head(emb)
            alone = min(alone, (time.perf_counter() - t0) / args.batch)
            alone_cpu = min(alone_cpu, (time.process_time() - c0) / args.batch)
        engine.close()

    n = len(images)
    cost = statistics.median([b / a for a, b in zip(times["none"], times["heads"])]) - 1
    cpu_cost = statistics.median([b / a for a, b in zip(cpu["none"], cpu["heads"])]) - 1
    best = min(times["heads"]) / min(times["none"]) - 1
    print(f"  no heads: best {n / min(times['none']):7.1f} img/s, median {n / statistics.median(times['none']):7.1f}")
    print(f"  3 heads:  best {n / min(times['heads']):7.1f} img/s, median {n / statistics.median(times['heads']):7.1f}")
    print(f"  heads alone (batches of {args.batch}, best of 20): {1e6 * alone:.0f} us/image = "
          f"{100 * alone * n / min(times['none']):.2f}% of a no-heads image's best wall time, "
          f"{100 * alone_cpu * n / statistics.median(cpu['none']):.2f}% of its median CPU time")
    print(f"  marginal cost: {100 * cost:+.1f}% wall, {100 * cpu_cost:+.1f}% CPU time (medians of round ratios; "
          f"best-of wall: {100 * best:+.1f}%); bar <= {100 * BAR:.0f}% (wall): {'met' if cost <= BAR else 'NOT met'}")
    return {"cost": cost, "cpu_cost": cpu_cost, "best_cost": best, "times": times, "cpu": cpu,
            "heads_alone_s_per_image": alone, "model": model}


if __name__ == "__main__":
    main()
