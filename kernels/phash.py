"""64-bit DCT perceptual hash (pHash), batched.

Bit-compatible with ``imagehash.phash`` for the same 32x32 grayscale input: 2-D DCT-II (unnormalised,
as ``scipy.fftpack.dct``), keep the 8x8 lowest frequencies (DC included), bit = coefficient > median
of those 64, bits packed row-major with the first bit as the most significant of a uint64.

Three pieces, no I/O (bytes in memory in, arrays out):
- ``gray32_from_bytes`` / ``gray32_batch``: decode + downscale to 32x32 grayscale. JPEGs use PIL's
  draft mode (the decoder scales by 1/2..1/8 in the DCT domain, so a 640x480 photo is never fully
  decoded); other formats are reduced by the same power-of-two box factor first, so a PNG copy of a
  JPEG takes a comparable path and lands on (nearly) the same hash.
- ``phash_gray32``: numpy reference, the whole batch as two matrix products.
- ``phash_gray32_torch``: the same on a torch device (float64, so it equals the reference bit for bit).
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIZE = 32  # hash_size 8 x highfreq_factor 4, as imagehash
LOW = 8
# Draft / reduce target: never shrink below 2x the final size before the Lanczos resize, which keeps
# the 32x32 result close to a full-resolution decode (imagehash's path): usually 0-2 bits, up to ~6
# (docs/dedup.md, measured by `python -m bench.phash_throughput --agreement`).
PRE_SIZE = 2 * SIZE


def dct_matrix(n: int = SIZE, rows: int = LOW) -> np.ndarray:
    """First ``rows`` rows of the unnormalised DCT-II matrix: y = C @ x equals scipy.fftpack.dct(x)."""
    k = np.arange(rows)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_C = dct_matrix()


def phash_gray32(gray: np.ndarray) -> np.ndarray:
    """(B, 32, 32) grayscale (any real dtype, 0..255) -> (B,) uint64 pHashes."""
    x = np.asarray(gray, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected (B, {SIZE}, {SIZE}) grayscale, got shape {x.shape}")
    low = _C @ x @ _C.T  # (B, 8, 8): rows then columns, as dct(dct(x, axis=0), axis=1)
    flat = low.reshape(len(x), LOW * LOW)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return pack_bits(bits)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(B, 64) bool -> (B,) uint64, first bit most significant (imagehash's hex string order)."""
    packed = np.packbits(bits.astype(np.uint8), axis=1)  # (B, 8) big-endian bit order
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def phash_gray32_torch(gray, device: str | None = None):
    """Torch path of ``phash_gray32``: (B, 32, 32) tensor or array -> (B,) uint64 numpy array.

    Runs where ``gray`` lives (or on ``device``). Float64 keeps the comparisons with the median exact,
    so it agrees with the numpy reference bit for bit; the work is tiny next to decoding.
    """
    import torch

    x = torch.as_tensor(gray)
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float64)
    if x.ndim != 3 or tuple(x.shape[1:]) != (SIZE, SIZE):
        raise ValueError(f"expected (B, {SIZE}, {SIZE}) grayscale, got shape {tuple(x.shape)}")
    c = torch.as_tensor(_C, dtype=torch.float64, device=x.device)
    flat = (c @ x @ c.T).reshape(x.shape[0], LOW * LOW)
    srt = torch.sort(flat, dim=1).values
    median = (srt[:, 31:32] + srt[:, 32:33]) / 2  # numpy's median of 64 values: mean of the middle two
    return pack_bits((flat > median).cpu().numpy())


def gray32_from_bytes(data: bytes | None) -> np.ndarray | None:
    """Decode one encoded image to a 32x32 uint8 grayscale array; None when it cannot be decoded."""
    from PIL import Image

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("L", (PRE_SIZE, PRE_SIZE))  # DCT-domain downscale, at least PRE_SIZE per side
                small = im.convert("L")
            else:
                im.seek(0)  # first frame of animations
                small = im.convert("L")
                factor = _reduce_factor(small.size)
                if factor > 1:
                    small = small.reduce(factor)
            return np.asarray(small.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)
    except Exception:  # undecodable, truncated, decompression bomb: no signature for this row
        return None


def _reduce_factor(size: tuple[int, int]) -> int:
    """The power-of-two factor JPEG draft mode would pick for PRE_SIZE (1, 2, 4 or 8)."""
    scale = min(size[0] // PRE_SIZE, size[1] // PRE_SIZE)
    for s in (8, 4, 2):
        if scale >= s:
            return s
    return 1


def gray32_batch(datas: list[bytes | None], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch: returns ((B, 32, 32) uint8, (B,) bool ok). Rows that failed are zeros with ok False.

    PIL releases the GIL while decoding and resizing, so ``threads`` > 1 uses more cores.
    """
    if threads > 1 and len(datas) > 1:
        with ThreadPoolExecutor(threads) as pool:
            arrays = list(pool.map(gray32_from_bytes, datas, chunksize=max(1, len(datas) // (4 * threads))))
    else:
        arrays = [gray32_from_bytes(d) for d in datas]
    ok = np.array([a is not None for a in arrays], dtype=bool)
    out = np.zeros((len(datas), SIZE, SIZE), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = a
    return out, ok


def phash_bytes(datas: list[bytes | None], threads: int = 1,
                device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encoded images -> ((B,) uint64 pHashes, (B,) bool ok); hashes of rows that failed are 0."""
    gray, ok = gray32_batch(datas, threads)
    if not ok.any():
        return np.zeros(len(datas), np.uint64), ok
    if device is not None and device != "cpu":
        hashes = phash_gray32_torch(gray, device)
    else:
        hashes = phash_gray32(gray)
    hashes[~ok] = 0
    return hashes, ok


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance of uint64 arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(np.int64)
