"""pHash kernel: bit-compatible with imagehash, torch path equals numpy, fast decode stays close."""
import io

import numpy as np
import pytest
from PIL import Image

from winnow.kernels.phash import gray32_batch, gray32_from_bytes, hamming, phash_bytes, phash_gray32, phash_gray32_torch


@pytest.fixture(scope="module")
def coco_bytes(coco_dir):
    return [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))]


def _imagehash_ref(data: bytes) -> int:
    import imagehash

    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def _plain_gray32(data: bytes) -> np.ndarray:
    """imagehash's own preprocessing: full decode, L, Lanczos to 32x32."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.Resampling.LANCZOS))


def test_numpy_kernel_is_bit_identical_to_imagehash(coco_bytes):
    gray = np.stack([_plain_gray32(d) for d in coco_bytes])
    ours = phash_gray32(gray)
    ref = np.array([_imagehash_ref(d) for d in coco_bytes], dtype=np.uint64)
    assert ours.dtype == np.uint64
    np.testing.assert_array_equal(ours, ref)
    assert len(set(ours.tolist())) == len(coco_bytes)  # distinct photos, distinct hashes


def test_torch_path_equals_numpy_on_cpu(coco_bytes):
    gray, ok = gray32_batch(coco_bytes)
    assert ok.all()
    np.testing.assert_array_equal(phash_gray32_torch(gray, "cpu"), phash_gray32(gray))


@pytest.mark.gpu
def test_torch_path_equals_numpy_on_cuda(coco_bytes):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gray, _ = gray32_batch(coco_bytes)
    np.testing.assert_array_equal(phash_gray32_torch(gray, "cuda"), phash_gray32(gray))
    hashes, ok = phash_bytes(coco_bytes, device="cuda")
    np.testing.assert_array_equal(hashes, phash_bytes(coco_bytes)[0])


def test_draft_mode_decode_stays_within_two_bits_of_full_decode(coco_bytes):
    fast, ok = phash_bytes(coco_bytes)
    assert ok.all()
    ref = np.array([_imagehash_ref(d) for d in coco_bytes], dtype=np.uint64)
    dist = hamming(fast, ref)
    assert dist.max() <= 2, dist
    # and the fast path really is the JPEG draft path: the decoded size is reduced before the resize
    im = Image.open(io.BytesIO(coco_bytes[0]))
    im.draft("L", (64, 64))
    assert im.size[0] < Image.open(io.BytesIO(coco_bytes[0])).size[0]


def test_formats_and_modes_decode_to_near_identical_hashes(coco_bytes):
    src = Image.open(io.BytesIO(coco_bytes[1])).convert("RGB")
    variants = {}
    for fmt, mode in [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("WEBP", "RGB"),
                      ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")]:
        buf = io.BytesIO()
        src.convert(mode).save(buf, format=fmt)
        variants[f"{fmt}-{mode}"] = buf.getvalue()
    hashes, ok = phash_bytes(list(variants.values()))
    assert ok.all()
    base = phash_bytes([coco_bytes[1]])[0][0]
    dist = dict(zip(variants, hamming(hashes, base).tolist()))
    # palette quantisation (GIF/P) changes pixels most; everything stays well inside the default radius
    assert max(dist.values()) <= 6, dist


def test_undecodable_inputs_have_no_signature():
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(good, format="PNG")
    truncated = good.getvalue()[:40]
    datas = [None, b"", b"not an image at all", truncated, good.getvalue()]
    hashes, ok = phash_bytes(datas)
    assert ok.tolist() == [False, False, False, False, True]
    assert (hashes[~ok] == 0).all()
    assert gray32_from_bytes(b"\xff\xd8\xff" + b"\x00" * 100) is None


def test_tiny_and_extreme_aspect_images_hash():
    datas = []
    for size in [(1, 1), (5, 3), (2000, 20), (20, 2000)]:
        buf = io.BytesIO()
        Image.effect_noise(size, 60).convert("RGB").save(buf, format="JPEG")
        datas.append(buf.getvalue())
    _, ok = phash_bytes(datas)
    assert ok.all()


def test_threads_give_the_same_hashes(coco_bytes):
    np.testing.assert_array_equal(phash_bytes(coco_bytes, threads=2)[0], phash_bytes(coco_bytes)[0])


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError):
        phash_gray32(np.zeros((2, 16, 16)))
