"""Image kernels for scoring: encoded bytes -> the exact tensor a CLIP model's own transform would give.

open_clip's eval transform is: resize the shorter side to S (bicubic, antialiased), centre-crop SxS,
convert to RGB, scale to [0, 1], normalise by mean/std. We reproduce it with less work:

* CPU, gray/YCbCr JPEGs: libjpeg-turbo (simplejpeg) scales by n/8 inside the IDCT, so a 2000 px photo
  is never fully decoded when 224 px are needed (at most ``DRAFT_SLACK`` below the resize target, so
  little of the detail the resize keeps is lost); torch's uint8 antialiased resize (PIL's filters) and
  the crop follow.
* CPU, everything else (and ``draft=False``, the exact reference): PIL, JPEG draft mode where allowed;
  only the centre-crop region is resampled (PIL ``resize`` with a source ``box``, same filter and phase
  as resize-then-crop). Normalisation: one converting copy per crop into a batch, then subtract/multiply.
* GPU: nvJPEG batched decode (``torchvision.io.decode_jpeg`` on cuda), antialiased bicubic resize of
  same-size groups, then clamp/round and normalise/cast, elementwise on the device. ``resize_crop``
  runs on any device, so the CPU run of the same function is the reference the GPU test compares against.

Every input mode becomes RGB the way open_clip does it (alpha dropped, palette expanded), except
that 16-bit images are scaled to 8 bits (PIL's plain convert would clip them to white) and the EXIF
orientation is applied so photos are scored upright. Pure compute: no file I/O, no pyarrow.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit
DRAFT_SLACK = 0.15  # accept a draft up to 15% under the resize target (a 1.15x upscale): 640x427 photos then decode at 1/2


class DecodeError(Exception):
    """An image that cannot be scored; ``reason`` becomes the rejection ``decode:<reason>``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreprocessSpec:
    """The numbers behind a model's eval transform (open_clip's ``model.visual.preprocess_cfg``)."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "PreprocessSpec":
        size = cfg["size"]
        size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

        def three(v):
            return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3

        return cls(size, three(cfg["mean"]), three(cfg["std"]), cfg.get("interpolation") or "bicubic",
                   cfg.get("resize_mode") or "shortest")

    @property
    def exact(self) -> bool:
        """True when these kernels reproduce the transform; otherwise callers use the model's own."""
        square = self.size[0] == self.size[1]
        return self.interpolation in ("bicubic", "bilinear") and (
            self.resize_mode == "squash" or (self.resize_mode == "shortest" and square))


def resize_plan(width: int, height: int, spec: PreprocessSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized_w, resized_h), (crop_left, crop_top)) with torchvision's Resize(int)+CenterCrop rounding."""
    th, tw = spec.size
    if spec.resize_mode == "squash":
        return (tw, th), (0, 0)
    if width <= height:
        rw, rh = th, int(th * height / width)
    else:
        rw, rh = int(th * width / height), th
    return (rw, rh), (int(round((rw - tw) / 2.0)), int(round((rh - th) / 2.0)))


# ----------------------------------------------------------------------------------------- CPU path
def open_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """PIL image with its header read (pixels not decoded yet); DecodeError names what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise DecodeError("missing")
    if len(data) == 0:
        raise DecodeError("empty")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("unidentified") from None
    except Image.DecompressionBombError:
        raise DecodeError("too_large") from None
    except Exception:
        raise DecodeError("corrupt") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError("zero_size")
    if max_pixels and w * h > max_pixels:
        raise DecodeError("too_large")
    return im


def exif_orientation(im) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a good image unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(im):
    """RGB the way open_clip's ``convert('RGB')`` does, but 16/32-bit integer images scaled, not clipped."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def decode_rgb(data: bytes | None, needed: tuple[int, int] | None = None, *, draft: bool = True,
               exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, draft_slack: float = DRAFT_SLACK):
    """(RGB PIL image, upright, possibly draft-reduced; full-resolution pixels per image pixel).

    ``needed`` is the (width, height) the caller will resample to, in upright coordinates: JPEG
    draft mode picks the largest DCT reduction that still leaves about that many pixels.
    """
    im = open_image(data, max_pixels)
    return _decode(im, exif_orientation(im) if exif else 1, needed if draft else None, draft_slack)


def _decode(im, orientation: int, needed: tuple[int, int] | None, draft_slack: float):
    from PIL import Image

    scale = 1.0
    if needed and im.format == "JPEG":
        req = needed if orientation < 5 else (needed[1], needed[0])
        req = (max(1, int(req[0] / (1 + draft_slack) + 0.999)), max(1, int(req[1] / (1 + draft_slack) + 0.999)))
        full_w = im.size[0]
        drafted = im.draft(im.mode, req)
        if drafted:  # (mode, box): box is the full image in reduced coordinates, so this is 1, 2, 4 or 8
            scale = full_w / drafted[1][2]
    try:
        im.load()
        im = to_rgb(im)
    except Image.DecompressionBombError:
        raise DecodeError("too_large") from None
    except OSError as exc:
        raise DecodeError("truncated" if "truncated" in str(exc) else "corrupt") from None
    except Exception:
        raise DecodeError("corrupt") from None
    if orientation != 1:
        im = im.transpose(_PIL_ORIENT[orientation])
    return im, scale


_PIL_ORIENT = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}  # EXIF orientation -> PIL Transpose value


def preprocess_cpu(data: bytes | None, specs: list[PreprocessSpec], *, draft: bool = True, exif: bool = True,
                   max_pixels: int = DEFAULT_MAX_PIXELS, draft_slack: float = DRAFT_SLACK) -> list[np.ndarray]:
    """Decode once, then one (H, W, 3) uint8 array per spec: resized + centre-cropped, not normalised."""
    from PIL import Image

    if draft:
        fast = _preprocess_jpeg(data, specs, exif, max_pixels, draft_slack)
        if fast is not None:
            return fast
    im = open_image(data, max_pixels)
    orientation = exif_orientation(im) if exif else 1
    w, h = im.size if orientation < 5 else im.size[::-1]
    plans = [resize_plan(w, h, s) for s in specs]
    needed = (max(p[0][0] for p in plans), max(p[0][1] for p in plans))
    im, scale = _decode(im, orientation, needed if draft else None, draft_slack)
    out = []
    for spec, ((rw, rh), (left, top)) in zip(specs, plans):
        th, tw = spec.size
        fx, fy = w / rw / scale, h / rh / scale  # image pixels per resized pixel
        box = (left * fx, top * fy, (left + tw) * fx, (top + th) * fy)
        resample = Image.BICUBIC if spec.interpolation == "bicubic" else Image.BILINEAR
        out.append(np.asarray(im.resize((tw, th), resample, box=box)))
    return out


def _preprocess_jpeg(data, specs: list[PreprocessSpec], exif: bool, max_pixels: int,
                     draft_slack: float) -> list[np.ndarray] | None:
    """The fast path for gray/YCbCr JPEGs: libjpeg-turbo (simplejpeg) decodes at the smallest n/8 scale that
    still covers the resize (1/2 for a 640x480 photo, 5/8 for 500x375, where PIL's draft offers only
    powers of two), then torch's uint8 antialiased resize (PIL's kernels, SIMD on channels-last) and the
    crop. None when this path does not apply or the bytes are bad: the PIL path then decodes or names why.
    """
    import torch
    import torch.nn.functional as F

    info = jpeg_info(data)
    if info is None or info.components not in (1, 3):  # CMYK/YCCK and non-JPEGs: PIL
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    if max_pixels and info.width * info.height > max_pixels:
        raise DecodeError("too_large")
    orientation = info.orientation if exif else 1
    w, h = (info.width, info.height) if orientation < 5 else (info.height, info.width)
    plans = [resize_plan(w, h, s) for s in specs]
    need = (max(p[0][0] for p in plans), max(p[0][1] for p in plans))  # upright (width, height)
    if orientation >= 5:
        need = need[::-1]
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_width=int(need[0] / (1 + draft_slack) + 0.999),
                                        min_height=int(need[1] / (1 + draft_slack) + 0.999))
    except ValueError:  # corrupt or truncated: PIL names the problem
        return None
    x = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation)[None]  # channels-last view
    out = []
    for spec, ((rw, rh), (left, top)) in zip(specs, plans):
        th, tw = spec.size
        y = x
        if (rh, rw) != tuple(x.shape[-2:]):
            y = F.interpolate(x, size=(rh, rw), antialias=True, align_corners=False,
                              mode="bicubic" if spec.interpolation == "bicubic" else "bilinear")
        out.append(y[0, :, top:top + th, left:left + tw].permute(1, 2, 0).numpy())
    return out


def normalize_batch(pixels, spec: PreprocessSpec, dtype=None, out=None):
    """Pixels in 0..255 -> normalised (N, 3, H, W) float32 (or ``dtype``).

    ``pixels``: a batch, uint8 or float, (N, H, W, 3) or (N, 3, H, W); or a list of (H, W, 3) arrays of any
    strides, e.g. ``preprocess_cpu``'s crops, which are views into planar resize output: each is converted
    straight into its slot while it is in cache, with no stacked uint8 copy in between (~0.03 ms/image).
    One converting copy into planar float32, then ``(x - 255 mean) * 1/(255 std)`` in place: three
    streaming passes, 3x faster than per-channel strided arithmetic. ``out``: a float32 (N, 3, H, W)
    buffer to reuse; a fresh batch-sized tensor costs more in page faults (~0.2 ms per 224 px image) than
    the arithmetic itself.
    """
    import torch

    if isinstance(pixels, (list, tuple)):
        images = [torch.from_numpy(_writeable(a)).permute(2, 0, 1) for a in pixels]
        if out is None:
            out = torch.empty((len(images), *images[0].shape), dtype=torch.float32) if images else torch.empty(0)
        shift, scale = _affine(spec, out.device)
        for x, slot in zip(images, out):
            slot.copy_(x)
            slot.sub_(shift[0]).mul_(scale[0])
    else:
        x = torch.as_tensor(_writeable(pixels))
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        shift, scale = _affine(spec, x.device)
        out.copy_(x)
        out.sub_(shift).mul_(scale)
    return out if dtype in (None, torch.float32) else out.to(dtype).contiguous()


def _writeable(a):
    """torch refuses to wrap read-only numpy memory (e.g. np.asarray of a PIL image)."""
    return a.copy() if isinstance(a, np.ndarray) and not a.flags.writeable else a


def _affine(spec: PreprocessSpec, device):
    """(255 mean, 1 / (255 std)) as (1, 3, 1, 1) float32 tensors."""
    import torch

    shift = torch.tensor([255.0 * m for m in spec.mean], dtype=torch.float32, device=device)
    scale = torch.tensor([1.0 / (255.0 * s) for s in spec.std], dtype=torch.float32, device=device)
    return shift.view(1, 3, 1, 1), scale.view(1, 3, 1, 1)


# ----------------------------------------------------------------------------------------- GPU path
@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    orientation: int
    gpu_ok: bool  # 8-bit sequential (baseline/extended) Huffman, gray or YCbCr: what we send to nvJPEG


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_info(data: bytes | None) -> JpegInfo | None:
    """Size, components and EXIF orientation from the JPEG markers (microseconds, no decode); None if not a JPEG."""
    if not data or len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, n, orientation = 2, len(data), 1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        seglen = (data[pos + 2] << 8) | data[pos + 3]
        seg = data[pos + 4:pos + 2 + seglen]
        if seglen < 2 or marker == 0xDA:  # scan data before a frame header: not something we trust
            return None
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            orientation = _tiff_orientation(seg[6:])
        elif marker in _SOF:
            if len(seg) < 6:
                return None
            height, width, comps = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
            # sequential Huffman JPEGs only: progressive ones go to PIL (nvJPEG's batched path is for baseline)
            ok = marker in (0xC0, 0xC1) and seg[0] == 8 and comps in (1, 3) and width > 0 and height > 0
            return JpegInfo(width, height, comps, orientation, ok)
        pos += 2 + seglen
    return None


def _tiff_orientation(t: bytes) -> int:
    try:
        end = {b"II": "<", b"MM": ">"}[t[:2]]
        off = struct.unpack(end + "I", t[4:8])[0]
        (count,) = struct.unpack(end + "H", t[off:off + 2])
        for i in range(min(count, 512)):
            e = off + 2 + 12 * i
            tag, typ = struct.unpack(end + "HH", t[e:e + 4])
            if tag == 0x0112 and typ == 3:
                value = struct.unpack(end + "H", t[e + 8:e + 10])[0]
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error, IndexError):
        pass
    return 1


def orient(x, orientation: int):
    """Apply an EXIF orientation to a (C, H, W) tensor, as PIL's exif_transpose does to an image."""
    import torch

    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1).flip(-2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def decode_jpeg_gpu(datas: list[bytes], device) -> list:
    """nvJPEG batched decode to (3, H, W) uint8 on ``device``; None where an image fails (CPU retries it)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 flags its image decoders as deprecated; torch warns that the bytes are
        # read-only, which is fine: the decoder only reads them (and a copy costs ~100 us per image)
        warnings.simplefilter("ignore")
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
        try:
            out = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # one bad image fails the whole batch: find it
            out = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except torch.cuda.OutOfMemoryError:
                    raise
                except RuntimeError:
                    out.append(None)
    return [None if x is None else (x.expand(3, -1, -1) if x.shape[0] == 1 else x) for x in out]


def resize_crop(images: list, spec: PreprocessSpec, max_elems: int = 1 << 27):
    """Upright (3, H, W) uint8 tensors -> (N, 3, h, w) float32 in 0..255, rounded like PIL's uint8 output.

    Same-size images are resized together (one kernel launch per size group, bounded by ``max_elems``).
    Antialiased bicubic in torch uses PIL's kernel (a = -0.5), so this matches the CPU path to ~1 level.
    """
    import torch
    import torch.nn.functional as F

    th, tw = spec.size
    out = torch.empty((len(images), 3, th, tw), dtype=torch.float32, device=images[0].device if images else "cpu")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(i)
    mode = "bicubic" if spec.interpolation == "bicubic" else "bilinear"
    for (h, w), idx in groups.items():
        (rw, rh), (left, top) = resize_plan(w, h, spec)
        per = max(1, max_elems // (3 * h * w))
        for k in range(0, len(idx), per):
            part = idx[k:k + per]
            x = torch.stack([images[i] for i in part]).to(torch.float32)
            if (rh, rw) != (h, w):
                x = F.interpolate(x, size=(rh, rw), mode=mode, antialias=True, align_corners=False)
            out[part] = x[:, :, top:top + th, left:left + tw].clamp_(0, 255).round_()
    return out
