"""JPEG markers read without decoding (size, components, EXIF orientation, nvJPEG eligibility) and
EXIF orientation applied to a tensor. Pure compute: microseconds per image, no I/O."""
from __future__ import annotations

import struct
from dataclasses import dataclass


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
