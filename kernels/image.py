"""Image kernels for scoring: encoded bytes -> the exact tensor a CLIP model's own transform would give.

open_clip's eval transform is: resize the shorter side to S (bicubic, antialiased), centre-crop SxS,
convert to RGB, scale to [0, 1], normalise by mean/std. We reproduce it with less work:

* CPU, gray/YCbCr JPEGs: libjpeg-turbo (simplejpeg) scales by n/8 inside the IDCT, so a 2000 px photo
  is never fully decoded when 224 px are needed (at most ``DRAFT_SLACK`` below the resize target, so
  little of the detail the resize keeps is lost); the resize left is mild, so OpenCV's SIMD resize does
  it (torch's uint8 antialiased one, PIL's filters, where it is not), then the crop.
* CPU, everything else (and ``draft=False``, the exact reference): PIL, JPEG draft mode where allowed;
  only the centre-crop region is resampled (PIL ``resize`` with a source ``box``, same filter and phase
  as resize-then-crop). Normalisation: one converting copy per crop into a batch, then subtract/multiply.
* GPU (``kernels/image_gpu.py``): nvJPEG batched decode, antialiased bicubic resize of same-size groups,
  then clamp/round and normalise/cast, elementwise on the device.

Every input mode becomes RGB the way open_clip does it (alpha dropped, palette expanded), except
that 16-bit images are scaled to 8 bits (PIL's plain convert would clip them to white) and the EXIF
orientation is applied so photos are scored upright. Pure compute: no file I/O, no pyarrow.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

from winnow.kernels.jpeg_header import jpeg_info, orient

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit
# accept a draft up to 15% under the resize target (a 1.15x upscale): 640x427 photos then decode at 1/2
DRAFT_SLACK = 0.15


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
    powers of two), then ``resize_hwc`` and the crop. None when this path does not apply or the bytes
    are bad: the PIL path then decodes or names why.
    """
    import torch

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
    if orientation != 1:
        pixels = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    out = []
    for spec, ((rw, rh), (left, top)) in zip(specs, plans):
        th, tw = spec.size
        resized = resize_hwc(pixels, (rw, rh), spec.interpolation, draft_slack)
        out.append(resized[top:top + th, left:left + tw])
    return out


def resize_hwc(pixels: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic",
               mild: float = DRAFT_SLACK) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 for size=(width, height), as PIL resizes (near enough).

    After an n/8-scaled decode the step left is mild (at most ``1 + mild`` smaller or larger), where
    antialiasing barely widens the kernel: OpenCV's SIMD cubic/linear resize does it, ~2.4x faster than
    torch's uint8 antialiased resize (0.66 grey levels apart on average on the COCO photos). Larger steps
    (huge images at 1/8, small images blown up) keep torch's, which does not alias fine detail and uses
    PIL's cubic (a=-0.5; OpenCV's a=-0.75 rings more when enlarging a lot).
    """
    import torch
    import torch.nn.functional as F

    (w, h), (h0, w0) = size, pixels.shape[:2]
    if (h, w) == (h0, w0):
        return pixels
    if max(w0 / w, w / w0, h0 / h, h / h0) <= 1 + mild:
        cv2 = _opencv()
        flag = cv2.INTER_CUBIC if interpolation == "bicubic" else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(pixels), (w, h), interpolation=flag)
    x = torch.from_numpy(_writeable(np.ascontiguousarray(pixels))).permute(2, 0, 1)[None]  # channels-last: SIMD
    y = F.interpolate(x, size=(h, w), antialias=True, align_corners=False,
                      mode="bicubic" if interpolation == "bicubic" else "bilinear")
    return y[0].permute(1, 2, 0).numpy()


@functools.lru_cache(maxsize=1)
def _opencv():
    """cv2, single-threaded: callers already spread images over threads or processes, and OpenCV's own
    pool on top of them only contends (measured: 2-thread preprocessing 2.29-2.37x -> 2.39-2.50x).
    img2dataset's resizer, the other OpenCV user in a winnow process, sets the same."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


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
