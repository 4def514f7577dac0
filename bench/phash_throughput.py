"""pHash throughput vs the `imagehash` library on the same real photos and cores, plus dedup quality.

Bar (issue 6): our images/s >= 5x imagehash's, same images, same number of threads (1 and 2).
Ours: encoded bytes -> JPEG draft-mode decode -> 32x32 -> one batched DCT (kernels/phash.py).
Reference: `imagehash.phash(PIL.Image.open(bytes))` per image (full decode, Lanczos from full size).
Both include decoding from bytes in memory; both use a thread pool for the 2-thread figure.

Quality: the 50 COCO photos plus planted copies (re-encode q50-95, resize 0.5-2x, crops 2-10%,
brightness +-10%, PNG, WebP); precision and recall of "is a copy of the same photo" per Hamming radius,
for our hashes and for imagehash's hashes (the reference).
Agreement (`--agreement`): by how many bits our stored pHash differs from `imagehash.phash` (full
decode) for the same bytes, on every COCO photo, on brightened copies (+30%, JPEG q90) and on the planted
copies; counts of equal hashes, median and max difference, the histogram. The figure in docs/dedup.md.
Run: `python -m bench.phash_throughput [--agreement]` (needs ../shared/data).
"""
from __future__ import annotations

import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from winnow.kernels.hamming import pairs_within
from winnow.kernels.phash import phash_bytes

COCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "images", "coco")


def imagehash_one(data: bytes) -> int:
    import imagehash
    from PIL import Image

    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def rates(fn_a, fn_b, datas, threads: int, rounds: int = 6) -> tuple[float, float, float, float]:
    """Images/s of two functions, rounds interleaved (a, b, a, b, ...) so a change in machine load hits both.

    Returns (wall a, wall b, cpu a, cpu b); the CPU figures (process CPU seconds) are what the work costs
    when other processes share the cores.
    """
    wall = [0.0, 0.0]
    cpu = [0.0, 0.0]
    for _ in range(rounds):
        for k, fn in enumerate((fn_a, fn_b)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn(datas, threads)
            wall[k] += time.perf_counter() - t0
            cpu[k] += time.process_time() - c0
    n = rounds * len(datas)
    return n / wall[0], n / wall[1], n / cpu[0], n / cpu[1]


def decode_floor(datas, threads):
    """JPEG entropy decoding alone, at 1/8 scale (DC only, no IDCT): the least any JPEG pHash must do."""
    from PIL import Image

    for d in datas:
        with Image.open(io.BytesIO(d)) as im:
            im.draft("L", (im.width // 8, im.height // 8))
            im.load()


def ours(datas, threads):
    return phash_bytes(datas, threads=threads)[0]


def reference(datas, threads):
    if threads == 1:
        return [imagehash_one(d) for d in datas]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(imagehash_one, datas))


def encode(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def brightened(datas, factor: float = 1.3) -> list[bytes]:
    from PIL import Image, ImageEnhance

    return [encode(ImageEnhance.Brightness(Image.open(io.BytesIO(d)).convert("RGB")).enhance(factor), "JPEG",
                   quality=90) for d in datas]


def bit_differences(images: list[bytes]) -> np.ndarray:
    """Per image: Hamming distance between our pHash and imagehash's of the same bytes."""
    ours_h = phash_bytes(images)[0]
    ref_h = np.array([imagehash_one(d) for d in images], dtype=np.uint64)
    return np.unpackbits((ours_h ^ ref_h).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def agreement(datas) -> None:
    images, _, kind = planted_copies(datas)
    sets = {"COCO photos": datas, "brightness 1.3, JPEG q90": brightened(datas),
            "planted copies, all kinds": [im for im, k in zip(images, kind) if k != "original"]}
    sets |= {f"  {name}": [im for im, k in zip(images, kind) if k == name] for name in dict.fromkeys(kind)
             if name != "original"}
    print("bits by which our pHash differs from imagehash.phash of the same bytes")
    print(f"{'images':<32} {'n':>4} {'equal':>6} {'median':>6} {'max':>4}  histogram (bits: count)")
    for name, group in sets.items():
        d = bit_differences(group)
        hist = ", ".join(f"{b}: {c}" for b, c in zip(*np.unique(d, return_counts=True)))
        print(f"{name:<32} {len(d):>4} {int((d == 0).sum()):>6} {float(np.median(d)):>6g} {int(d.max()):>4}  {hist}")


def planted_copies(datas, seed=0):
    """(images, source photo index, kind) for originals and copies, as the tests plant them."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    images, source, kind = [], [], []

    def add(b, k, name):
        images.append(b)
        source.append(k)
        kind.append(name)

    for k, data in enumerate(datas):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = im.size
        add(data, k, "original")
        for q in (50, 70, 95):
            add(encode(im, "JPEG", quality=q), k, "reencode")
        for s in (0.5, 0.75, 1.5, 2.0):
            add(encode(im.resize((int(w * s), int(h * s)), Image.BICUBIC), "JPEG", quality=90), k, "resize")
        add(encode(im, "PNG", compress_level=1), k, "png/webp")
        add(encode(im, "WEBP", quality=80, method=0), k, "png/webp")
        for b in (0.9, 1.1):
            add(encode(ImageEnhance.Brightness(im).enhance(b), "JPEG", quality=90), k, "brightness")
        for cut in (0.02, 0.05, 0.10):
            dx, dy = int(w * cut), int(h * cut)
            ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
            add(encode(im.crop((ox, oy, ox + w - dx, oy + h - dy)), "JPEG", quality=90), k, f"crop{int(cut * 100)}%")
    return images, np.array(source), np.array(kind)


def quality(hashes, source, kind, radius):
    """Pairwise: precision over all pairs found within radius; recall of copies (pair with their original)."""
    i, j, _ = pairs_within(hashes, radius)
    precision = float((source[i] == source[j]).mean()) if len(i) else 1.0
    orig = {int(s): n for n, (s, k) in enumerate(zip(source, kind)) if k == "original"}
    found = set(zip(i.tolist(), j.tolist()))
    recall = {}
    for name in dict.fromkeys(kind):
        if name == "original":
            continue
        rows = np.flatnonzero(kind == name)
        hit = [tuple(sorted((orig[int(source[r])], int(r)))) in found for r in rows]
        recall[name] = float(np.mean(hit))
    return precision, recall


def main() -> int:
    paths = sorted(os.path.join(COCO, f) for f in os.listdir(COCO) if f.endswith(".jpg")) if os.path.isdir(COCO) else []
    if not paths:
        print(f"skipped: no COCO photos in {COCO}")
        return 0
    datas = [open(p, "rb").read() for p in paths]
    if "--agreement" in sys.argv[1:]:
        print(f"{len(datas)} COCO photos from {os.path.abspath(COCO)}")
        agreement(datas)
        return 0
    print(f"{len(datas)} COCO photos (typ. 640x480 JPEG), {os.cpu_count()} cores")
    ok = True
    for threads in (1, 2):
        ours_w, ref_w, ours_c, ref_c = rates(ours, reference, datas, threads)
        ratio = ours_w / ref_w
        ok &= ratio >= 5
        print(f"threads={threads}: ours {ours_w:6,.0f} images/s   imagehash {ref_w:5,.0f} images/s   "
              f"ratio {ratio:4.1f}x (bar >= 5x: {'PASS' if ratio >= 5 else 'FAIL'});  per CPU-second: "
              f"ours {ours_c:5,.0f}, imagehash {ref_c:4,.0f}, ratio {ours_c / ref_c:4.1f}x")
    floor_w, ref_w, floor_c, ref_c = rates(decode_floor, reference, datas, 1)
    print(f"JPEG entropy decode alone (1/8 scale, 1 thread): {floor_c:,.0f} images/s per CPU-second = "
          f"{floor_c / ref_c:.1f}x imagehash: the ceiling for any CPU pHash that reads JPEG bytes")

    images, source, kind = planted_copies(datas)
    ours_h = phash_bytes(images)[0]
    ref_h = np.array([imagehash_one(d) for d in images], dtype=np.uint64)
    kinds = [k for k in dict.fromkeys(kind) if k != "original"]
    print(f"\nquality on {len(images)} images ({len(datas)} photos + copies); pairwise precision, recall per kind")
    print(f"{'radius':>6} {'hash':>9} {'precision':>9} " + " ".join(f"{k:>10}" for k in kinds))
    for radius in (2, 4, 6, 8, 10, 12):
        for label, h in (("ours", ours_h), ("imagehash", ref_h)):
            p, r = quality(h, source, kind, radius)
            print(f"{radius:>6} {label:>9} {p:>9.3f} " + " ".join(f"{r[k]:>10.2f}" for k in kinds))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
