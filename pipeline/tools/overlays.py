"""Planted image defects for `winnow sample`: watermark-like overlays and blur.

A watermark is what stock-photo sites and aggregators stamp on web images: semi-transparent text
(a site name, a copyright line) or a logo (a ring with a letter in it), white or black, at a random
place and size, sometimes repeated diagonally across the picture. The overlay is large enough to
survive a CLIP model's downscale (its strokes are a few percent of the short side), as real
stock watermarks are: a mark that vanishes at 224 px is not one a training set needs to drop. A single
mark lies inside the central square of the picture, the part a CLIP model's centre crop keeps: a mark
in a cropped-off margin is invisible to every embedding-based judge (LAION's included), so planting
it there would test the crop, not the judge.
Blur is a Gaussian blur whose radius is 1.5-4% of the short side (an out-of-focus or upscaled photo).
"""
from __future__ import annotations

import numpy as np

WATERMARK_TEXTS = ["© shutterpix", "SAMPLE", "stockimg.com", "PREVIEW", "© 2024 photoagency", "dreamstock",
                   "watermark", "© imagebank", "PROOF", "getpics.net"]


def add_watermark(img, rng: np.random.Generator):
    """Return a copy of the RGB PIL ``img`` with a semi-transparent text or logo overlay."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = img.size
    short = min(w, h)
    x0, y0 = (w - short) // 2, (h - short) // 2  # the central square: what a centre crop keeps
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shade = 255 if rng.random() < 0.7 else 0
    alpha = int(rng.integers(140, 210))  # 55-82% opaque: readable, yet the picture shows through
    colour = (shade, shade, shade, alpha)
    kind = rng.random()
    if kind < 0.25:  # a logo: a thick ring with a letter in it
        r = int(short * rng.uniform(0.16, 0.26))
        cx, cy = x0 + int(rng.integers(r, short - r + 1)), y0 + int(rng.integers(r, short - r + 1))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(3, r // 4))
        font = ImageFont.load_default(size=max(10, int(r * 1.1)))
        draw.text((cx, cy), str(rng.choice(list("SPWA©"))), fill=colour, font=font, anchor="mm")
    else:
        text = str(rng.choice(WATERMARK_TEXTS))
        size = max(10, int(short * rng.uniform(0.13, 0.22)))
        font = ImageFont.load_default(size=size)
        stroke = max(1, size // 12)
        if kind < 0.5:  # tiled diagonally across the whole picture, as stock previews are
            tile = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
            tdraw = ImageDraw.Draw(tile)
            step_y = int(size * rng.uniform(2.5, 4.0))
            for k, y in enumerate(range(0, h * 2, step_y)):
                tdraw.text(((k % 2) * size * 2, y), "   ".join([text] * 6), fill=colour, font=font,
                           stroke_width=stroke, stroke_fill=colour)
            tile = tile.rotate(float(rng.uniform(20, 40)), resample=Image.BILINEAR)
            layer = tile.crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
        else:  # one line of text somewhere
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
            while right - left > short and size > 10:  # a long line shrinks to fit the square
                size = max(10, int(size * 0.85))
                font = ImageFont.load_default(size=size)
                left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
            tw, th = right - left, bottom - top
            x = x0 + int(rng.integers(0, max(1, short - tw)))
            y = y0 + int(rng.integers(0, max(1, short - th)))
            draw.text((x - left, y - top), text, fill=colour, font=font, stroke_width=stroke, stroke_fill=colour)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def blur(img, rng: np.random.Generator):
    """Return a Gaussian-blurred copy of ``img`` (radius 1.5-4% of its short side)."""
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(radius=min(img.size) * float(rng.uniform(0.015, 0.04))))
