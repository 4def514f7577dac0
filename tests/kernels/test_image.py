"""Image kernels against PIL + open_clip's own transform: geometry, every odd format, errors, GPU twin."""
import functools
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.tiny_clip import encode
from winnow.kernels import image as K
from winnow.kernels import image_gpu, jpeg_header

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SPEC = K.PreprocessSpec((224, 224), MEAN, STD)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def open_clip_transform(size=224):
    import open_clip

    return open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD)


def ours(data, spec=SPEC, **kw):
    return K.normalize_batch(np.stack(K.preprocess_cpu(data, [spec], **kw)), spec)[0]


def photo(w, h, seed=0):
    """A smooth random 'photo' (low-frequency content, like real pictures after downscaling)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.mark.parametrize("w,h", [(640, 480), (480, 640), (333, 1000), (224, 224), (100, 60), (1, 1), (500, 224)])
def test_geometry_matches_resize_then_center_crop_exactly(w, h):
    data = encode(photo(w, h), "PNG")  # lossless, no draft: only the box-resize differs from the reference
    ref = open_clip_transform()(Image.open(io.BytesIO(data)))
    got = ours(data, draft=False)
    assert got.shape == ref.shape == (3, 224, 224)
    diff = (got - ref).abs()
    assert diff.mean() < 0.003 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_resize_plan_follows_torchvision_rounding():
    import torchvision.transforms.functional as F

    for w, h in [(640, 427), (427, 640), (1001, 333), (225, 224), (3, 1000)]:
        (rw, rh), (left, top) = K.resize_plan(w, h, SPEC)
        resized = F.resize(Image.new("RGB", (w, h)), 224)
        assert (rw, rh) == resized.size
        assert (left, top) == (int(round((rw - 224) / 2.0)), int(round((rh - 224) / 2.0)))


def test_draft_mode_stays_close_on_real_photos(coco_dir):
    paths = sorted(coco_dir.glob("*.jpg"))[:12]
    for p in paths:
        data = p.read_bytes()
        ref = open_clip_transform()(Image.open(io.BytesIO(data)))
        diff = (ours(data) - ref).abs()
        # ~1.5-3 grey levels on average: the decoder's n/8 scaling keeps less detail than a full decode
        # followed by an antialiased downscale; CLIP scores stay within 0.01 (test_clip_score's fidelity test)
        assert diff.mean() < 0.1, (p.name, diff.mean())


@functools.lru_cache(maxsize=1)
def _modes():
    base = photo(320, 240, seed=3)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    p_trans = base.convert("P", palette=Image.ADAPTIVE)
    p_trans.info["transparency"] = 0
    gif_frames = [base.convert("P"), photo(320, 240, seed=4).convert("P")]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:])
    return {
        "gray_jpeg": (encode(base.convert("L"), "JPEG", quality=95), base.convert("L")),
        "cmyk_jpeg": (encode(base.convert("CMYK"), "JPEG", quality=95), base.convert("CMYK")),
        "progressive_jpeg": (encode(base, "JPEG", quality=95, progressive=True), base),
        "rgba_png": (encode(rgba, "PNG"), rgba),
        "la_png": (encode(rgba.convert("LA"), "PNG"), rgba.convert("LA")),
        "palette_png": (encode(p_trans, "PNG"), p_trans),
        "one_bit_png": (encode(base.convert("1"), "PNG"), base.convert("1")),
        "webp": (encode(base, "WEBP", lossless=True), base),
        "gif_animated": (gif.getvalue(), gif_frames[0]),
    }


@pytest.mark.parametrize("name", list(_modes()))
def test_odd_formats_decode_like_convert_rgb(name):
    data, source = _modes()[name]
    got = ours(data, draft=False)
    # what open_clip gives once the image is RGB (it converts after resizing, which for palette
    # images means nearest-neighbour resizing: we convert first, then resize properly)
    ref = open_clip_transform()(source.convert("RGB"))
    tolerance = 0.08 if "jpeg" in name else 0.02  # JPEG: lossy round trip of the source
    assert (got - ref).abs().mean() < tolerance, name


def test_16bit_png_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 256 * 64).reshape(64, 256)).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = K.preprocess_cpu(data, [K.PreprocessSpec((64, 64), MEAN, STD)])[0]
    assert arr[0].mean() < 10 and arr[-1].mean() > 245  # a dark-to-bright ramp, not all white
    assert 100 < arr.mean() < 155


def exif_jpeg(img, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("draft", [False, True])  # PIL path; fast JPEG path (decoder scaling)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation, draft):
    data = exif_jpeg(photo(900, 600, seed=5), orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    ref = open_clip_transform()(upright)
    assert (ours(data, draft=draft) - ref).abs().mean() < (0.08 if draft else 0.01)
    if orientation != 1:  # and it matters: without it the picture differs
        assert (ours(data, draft=draft, exif=False) - ref).abs().mean() > 0.1


def test_fast_jpeg_path_takes_gray_ycbcr_and_progressive_and_leaves_the_rest_to_pil():
    modes = _modes()
    fast = {name: K._preprocess_jpeg(data, [SPEC], True, K.DEFAULT_MAX_PIXELS, K.DRAFT_SLACK)
            for name, (data, _) in modes.items()}
    assert {n for n, v in fast.items() if v is not None} == {"gray_jpeg", "progressive_jpeg"}
    baseline = encode(photo(1000, 700, seed=6), "JPEG", quality=90)
    arr = K._preprocess_jpeg(baseline, [SPEC], True, K.DEFAULT_MAX_PIXELS, K.DRAFT_SLACK)[0]
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    for name in ("gray_jpeg", "progressive_jpeg", "cmyk_jpeg"):  # whichever path: the same picture
        data, source = modes[name]
        assert (ours(data) - open_clip_transform()(source.convert("RGB"))).abs().mean() < 0.08, name
    with pytest.raises(K.DecodeError) as info:  # the header alone says it is too big: no decode
        K.preprocess_cpu(baseline, [SPEC], max_pixels=1000 * 699)
    assert info.value.reason == "too_large"


def png_claiming_size(w, h):
    """A tiny PNG whose header announces w x h pixels (a decompression bomb's calling card)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_resize_hwc_is_pils_resize_for_mild_steps_and_antialiased_for_large_ones():
    def pil(a, size):
        return np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC)).astype(float)

    stripes = np.zeros((300, 300, 3), np.uint8)
    stripes[:, ::2] = 255
    stripes[::3] = 40
    cases = {  # name: (pixels, size, mean |ours - PIL| allowed in grey levels)
        "after an n/8 decode": (np.asarray(photo(320, 240, seed=1)), (299, 224), 1.0),
        "1-px stripes / 3": (stripes, (100, 100), 0.1),  # unantialiased cubic: ~127 (aliasing)
        "noise x 7": (np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8), (280, 210), 0.1),
    }
    for name, (pixels, size, allowed) in cases.items():
        got = K.resize_hwc(pixels, size)
        assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8, name
        assert np.abs(got - pil(pixels, size)).mean() < allowed, name
    same = np.asarray(photo(64, 48))
    assert K.resize_hwc(same, (64, 48)) is same


def test_decode_errors_have_precise_reasons():
    good = encode(photo(64, 64), "JPEG")
    huge = png_claiming_size(20000, 20000)
    cases = {"missing": None, "empty": b"", "unidentified": b"<html>not an image</html>",
             "too_large": huge}
    for reason, data in cases.items():
        with pytest.raises(K.DecodeError) as info:
            K.preprocess_cpu(data, [SPEC], max_pixels=100_000_000)
        assert info.value.reason == reason
    with pytest.raises(K.DecodeError) as info:
        K.preprocess_cpu(good[: len(good) // 2], [SPEC])
    assert info.value.reason in ("truncated", "corrupt")


def test_one_decode_serves_several_specs():
    data = encode(photo(640, 480), "JPEG", quality=95)
    small = K.PreprocessSpec((64, 64), MEAN, STD)
    squash = K.PreprocessSpec((96, 128), (0.5,) * 3, (0.5,) * 3, resize_mode="squash")
    a, b, c = K.preprocess_cpu(data, [SPEC, small, squash])
    assert a.shape == (224, 224, 3) and b.shape == (64, 64, 3) and c.shape == (96, 128, 3)
    ref = open_clip_transform(64)(Image.open(io.BytesIO(data)))
    assert (K.normalize_batch(b[None], small)[0] - ref).abs().mean() < 0.05


def test_normalize_batch_equals_to_tensor_then_normalize():
    import torchvision.transforms as T

    arr = np.random.default_rng(0).integers(0, 256, size=(2, 8, 9, 3), dtype=np.uint8)
    ref = torch.stack([T.Normalize(MEAN, STD)(T.ToTensor()(a)) for a in arr])
    got = K.normalize_batch(arr, SPEC)
    assert torch.allclose(got, ref, atol=1e-5)
    assert K.normalize_batch(arr, SPEC, torch.float16).dtype == torch.float16
    planar = torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # float, channels first: the GPU path's input
    assert torch.allclose(K.normalize_batch(planar, SPEC), ref, atol=1e-5)
    buf = torch.full(ref.shape, float("nan"))
    assert K.normalize_batch(arr, SPEC, out=buf) is buf and torch.allclose(buf, ref, atol=1e-5)
    views = [torch.from_numpy(a.transpose(2, 0, 1).copy()).permute(1, 2, 0).numpy() for a in arr]  # planar memory
    assert not views[0].flags.c_contiguous
    buf.fill_(float("nan"))
    assert K.normalize_batch(views, SPEC, out=buf) is buf and torch.allclose(buf, ref, atol=1e-5)
    assert torch.allclose(K.normalize_batch(list(arr), SPEC), ref, atol=1e-5)


def test_jpeg_header_reader():
    base = photo(123, 45)
    info = jpeg_header.jpeg_info(exif_jpeg(base, 6))
    assert (info.width, info.height, info.components, info.orientation, info.gpu_ok) == (123, 45, 3, 6, True)
    assert not jpeg_header.jpeg_info(encode(base, "JPEG", progressive=True)).gpu_ok  # PIL decodes those
    assert jpeg_header.jpeg_info(encode(base.convert("L"), "JPEG")).components == 1
    assert not jpeg_header.jpeg_info(encode(base.convert("CMYK"), "JPEG")).gpu_ok
    assert jpeg_header.jpeg_info(encode(base, "PNG")) is None
    assert jpeg_header.jpeg_info(b"\xff\xd8\xff") is None and jpeg_header.jpeg_info(None) is None
    # big-endian EXIF too
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, 8, 0) + b"\x00" * 4
    assert jpeg_header._tiff_orientation(tiff) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tensor_orientation_matches_pil(orientation):
    img = photo(7, 5, seed=orientation)
    data = exif_jpeg(img, orientation)
    raw = Image.open(io.BytesIO(data))
    raw.load()
    want = np.asarray(ImageOps.exif_transpose(raw))
    got = jpeg_header.orient(torch.from_numpy(np.asarray(raw).copy()).permute(2, 0, 1), orientation).permute(1, 2, 0)
    np.testing.assert_array_equal(got.numpy(), want)


def test_torch_resize_crop_matches_pil_path():
    """resize_crop is the GPU kernel; on CPU it must already agree with the PIL reference."""
    imgs = [photo(640, 480, 1), photo(480, 640, 2), photo(640, 480, 3), photo(300, 300, 4)]
    tensors = [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in imgs]
    got = K.normalize_batch(image_gpu.resize_crop(tensors, SPEC), SPEC)
    ref = torch.stack([open_clip_transform()(i) for i in imgs])
    assert got.shape == ref.shape
    assert (got - ref).abs().mean() < 0.01


@pytest.mark.gpu
@cuda
def test_gpu_decode_and_resize_match_cpu_reference(coco_dir):
    datas = [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:16]]
    dev = torch.device("cuda")
    decoded = image_gpu.decode_jpeg_gpu(datas, dev)
    for data, img in zip(datas, decoded):
        ref = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
        assert img is not None and img.shape == ref.shape
        assert (img.cpu().float() - ref.float()).abs().mean() < 2.0  # nvJPEG vs libjpeg IDCT rounding
    cpu = image_gpu.resize_crop([d.cpu() for d in decoded], SPEC)
    gpu = image_gpu.resize_crop(decoded, SPEC).cpu()
    assert (gpu - cpu).abs().max() <= 1.0
    norm = K.normalize_batch(image_gpu.resize_crop(decoded, SPEC), SPEC, torch.float16).float().cpu()
    assert (norm - K.normalize_batch(cpu, SPEC)).abs().max() < 0.02
    bad = image_gpu.decode_jpeg_gpu([datas[0], b"\xff\xd8\xff\xe0garbage", datas[1]], dev)
    assert bad[0] is not None and bad[1] is None and bad[2] is not None
