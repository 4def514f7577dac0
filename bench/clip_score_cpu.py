"""CPU end-to-end CLIP scoring, images/s from JPEG bytes + captions to scores, on the real COCO photos.

Ours: the engine behind the clip_score stage (draft decode in a thread pool overlapped with the
model, batched normalisation, captions encoded without their padding tail). Reference, same run:
the plain open_clip loop — a torch DataLoader (PIL decode + the model's own transform + tokenizer in
``--workers`` worker processes) feeding encode_image/encode_text + cosine. Same model, same torch
threads, same batch size; weights are random (no hub here): speed does not depend on their values.

    python -m bench.clip_score_cpu [--model open_clip:ViT-B-32] [--images 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time

from bench.clip_preprocess import COCO


class _Pairs:
    """A map-style dataset as a plain open_clip user writes it."""

    def __init__(self, images, captions, preprocess, tokenizer):
        self.images, self.captions, self.preprocess, self.tokenizer = images, captions, preprocess, tokenizer

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.preprocess(Image.open(io.BytesIO(self.images[i]))), self.tokenizer([self.captions[i]])[0]


def load_pairs(n: int) -> tuple[list[bytes], list[str]]:
    rows = [json.loads(line) for line in (COCO / "captions.jsonl").read_text().splitlines()]
    images = [(COCO / r["file"]).read_bytes() for r in rows]
    captions = [r["captions"][0] for r in rows]
    reps = -(-n // len(rows))
    return (images * reps)[:n], (captions * reps)[:n]


def reference(model, preprocess, tokenizer, images, captions, batch: int, workers: int, device: str = "cpu",
              dtype=None) -> float:
    """Seconds for the plain loop over all pairs (scores copied back to the host, as a user would)."""
    import torch

    loader = torch.utils.data.DataLoader(_Pairs(images, captions, preprocess, tokenizer), batch_size=batch,
                                         num_workers=workers, persistent_workers=False, pin_memory=device != "cpu")
    t0 = time.perf_counter()
    with torch.inference_mode():
        for pix, tok in loader:
            img = model.encode_image(pix.to(device, dtype or torch.float32, non_blocking=True))
            txt = model.encode_text(tok.to(device, non_blocking=True))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            (img * txt).sum(-1).cpu().numpy()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="open_clip:ViT-B-32")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (both sides)")
    ap.add_argument("--workers", type=int, default=1, help="decode workers: DataLoader processes / our threads")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from winnow.stages.filter.clip_engine import ClipEngine

    torch.set_num_threads(args.threads)
    images, captions = load_pairs(args.images)
    engine = ClipEngine({"score": args.model}, device="cpu", model_batch=args.batch, threads=args.workers,
                        allow_random=True)
    engine.setup()
    m = engine.models["score"]  # the very same model object for the reference loop
    ref_parts = (m.model, m.preprocess, m.open_clip_tokenizer)  # open_clip's own tokenizer, as a plain loop has
    engine.score(images[: args.batch], captions[: args.batch])  # warm-up both paths once
    reference(*ref_parts, images[: args.batch], captions[: args.batch], args.batch, 0)
    ours_s, ref_s = float("inf"), float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        scores = engine.score(images, captions).scores["score"]
        ours_s = min(ours_s, time.perf_counter() - t0)
        ref_s = min(ref_s, reference(*ref_parts, images, captions, args.batch, args.workers))
    assert len(scores) == len(images)
    n = len(images)
    print(f"CLIP scoring on CPU, {args.model} (random weights), {n} COCO photos + captions, batch {args.batch}, "
          f"torch threads {args.threads}, decode workers {args.workers}, best of {args.rounds}")
    print(f"  plain open_clip DataLoader loop: {n / ref_s:7.1f} images/s")
    print(f"  winnow clip_score engine:        {n / ours_s:7.1f} images/s")
    print(f"  speedup: {ref_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
