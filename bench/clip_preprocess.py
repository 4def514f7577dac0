"""CPU image preprocessing for CLIP scoring, images/s on the real COCO photos.

Ours: kernels.image.preprocess_cpu (n/8-scaled libjpeg-turbo decode + the mild resize left, by OpenCV) + one
batched normalisation, each crop converted straight into a reused batch buffer, as the scoring engine does on
CPU. Reference, same run, same images: PIL decode + open_clip's own eval transform
(Resize/CenterCrop/ToTensor/Normalize) + torch.stack, i.e. what a plain open_clip loop does.
Both are measured with 1 thread and with a thread pool of --threads (PIL releases the GIL while
decoding and resizing, so a pool scales both). Best of --rounds short rounds, interleaved: many short
rounds find quiet moments for both sides on a shared machine (5 rounds of 200 images swung 2.7-3.3x).

    python -m bench.clip_preprocess [--size 224] [--repeat 1] [--rounds 25] [--threads N] [--reencode 90:420]
"""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

COCO = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "images" / "coco"


def load_images(repeat: int, reencode: str = "") -> list[bytes]:
    """The COCO photos as shipped (4:4:4, ~158 KB each), or re-encoded as ``Q:SUBSAMPLING`` (e.g. ``90:420``,
    what most web JPEGs are) to see how the comparison moves with the encoding."""
    paths = sorted(COCO.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"COCO photos not found in {COCO}")
    datas = [p.read_bytes() for p in paths]
    if reencode:
        from PIL import Image

        quality, sub = reencode.split(":")
        out = []
        for d in datas:
            buf = io.BytesIO()
            Image.open(io.BytesIO(d)).convert("RGB").save(buf, "JPEG", quality=int(quality),
                                                          subsampling={"444": 0, "422": 1, "420": 2}[sub])
            out.append(buf.getvalue())
        datas = out
    return datas * repeat


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=1, help="passes over the 50 photos per round")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reencode", default="", help="QUALITY:SUBSAMPLING, e.g. 90:420; default: the photos as shipped")
    args = ap.parse_args(argv)

    import open_clip
    import torch
    from PIL import Image

    from winnow.kernels import image as K

    torch.set_num_threads(1)
    datas = load_images(args.repeat, args.reencode)
    transform = open_clip.image_transform(args.size, is_train=False)  # ViT-B-32/L-14 defaults: bicubic, OpenAI mean/std
    spec = K.PreprocessSpec((args.size, args.size), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)

    def ref_one(d):
        return transform(Image.open(io.BytesIO(d)))

    def ours_one(d):
        return K.preprocess_cpu(d, [spec])[0]

    pool = ThreadPoolExecutor(args.threads)
    # the scoring engine normalises into a batch buffer it reuses across chunks (stages/filter/clip_engine.py);
    # the reference stacks fresh tensors, as open_clip's transform + a DataLoader's collate do
    batch = torch.empty((len(datas), 3, args.size, args.size))
    runs = {
        "open_clip transform, 1 thread": lambda: torch.stack([ref_one(d) for d in datas]),
        "winnow kernels,      1 thread": lambda: K.normalize_batch([ours_one(d) for d in datas], spec, out=batch),
        f"open_clip transform, {args.threads} threads": lambda: torch.stack(list(pool.map(ref_one, datas))),
        f"winnow kernels,      {args.threads} threads": lambda:
            K.normalize_batch(list(pool.map(ours_one, datas)), spec, out=batch),
    }
    best = {name: float("inf") for name in runs}
    best_cpu = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            best_cpu[name] = min(best_cpu[name], time.process_time() - c0)
    rate = {name: len(datas) / s for name, s in best.items()}
    names = list(runs)
    print(f"CLIP preprocessing, {len(datas)} COCO JPEGs ({len(datas) // args.repeat} photos x {args.repeat}"
          f"{', re-encoded ' + args.reencode if args.reencode else ''}), {args.size}px, best of {args.rounds}, "
          f"cpu_count={os.cpu_count()}")
    for name in names:
        print(f"  {name}: {rate[name]:8.1f} images/s (wall)")
    # single-threaded work measured in CPU time too: robust to other processes sharing the machine
    per_cpu = [len(datas) / best_cpu[n] for n in names[:2]]
    print(f"  1 thread, per CPU-second: open_clip {per_cpu[0]:.1f}, winnow {per_cpu[1]:.1f} images/s -> "
          f"{per_cpu[1] / per_cpu[0]:.2f}x")
    print(f"  speedup, same threads (1): {rate[names[1]] / rate[names[0]]:.2f}x")
    print(f"  speedup, same threads ({args.threads}): {rate[names[3]] / rate[names[2]]:.2f}x")
    print(f"  speedup, batched+threaded kernels vs plain 1-thread loop: {rate[names[3]] / rate[names[0]]:.2f}x")


if __name__ == "__main__":
    main()
