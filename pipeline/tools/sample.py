"""`winnow sample`: realistic synthetic image-text shards with planted problems and their ground truth.

Images are drawn procedurally (coloured shapes on a smooth random background, varied sizes,
JPEG and PNG) and captions describe what was drawn, so a small CLIP can learn the pairing. Problems
are planted in known proportions, one per row at most, and written to ``ground_truth.parquet``.
Watermark-like overlays and blur (pipeline/tools/overlays.py) are opt-in (``--watermark``,
``--blurred``): their rows keep a caption that describes the scene, as alt-text does.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa

from winnow.pipeline.rundir import write_parquet_atomic
from winnow.pipeline.tools import overlays
from winnow.stages.errors import WinnowError

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
          "purple": (140, 50, 170), "orange": (245, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245),
          "pink": (245, 130, 180), "brown": (120, 75, 40)}
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
TRANSLATIONS = {  # (colour, shape, template) per language; enough for fastText to be sure
    "fr": ({"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
            "orange": "orange", "black": "noir", "white": "blanc", "pink": "rose", "brown": "marron"},
           {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile", "ring": "anneau",
            "cross": "croix"}, "une photo d'un {s} {c} posé sur un fond {b}, avec beaucoup de lumière"),
    "de": ({"red": "roten", "green": "grünen", "blue": "blauen", "yellow": "gelben", "purple": "lila",
            "orange": "orangen", "black": "schwarzen", "white": "weißen", "pink": "rosa", "brown": "braunen"},
           {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "ring": "Ring",
            "cross": "Kreuz"}, "ein Foto von einem {c} {s} auf einem {b} Hintergrund, schön beleuchtet"),
    "es": ({"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado",
            "orange": "naranja", "black": "negro", "white": "blanco", "pink": "rosa", "brown": "marrón"},
           {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "star": "estrella",
            "ring": "anillo", "cross": "cruz"}, "una foto de un {s} {c} sobre un fondo {b}, con mucha luz"),
}
EN_TEMPLATES = ["a photo of {objs} on a {bg} background", "{objs} drawn on a {bg} background",
                "an illustration showing {objs} over a {bg} backdrop", "a simple picture of {objs}, {bg} background"]
# planted problem -> default fraction of rows
PROBLEMS = {"corrupt_image": 0.02, "zero_bytes": 0.01, "tiny_image": 0.03, "extreme_aspect": 0.02,
            "empty_caption": 0.02, "long_caption": 0.01, "non_english": 0.05, "exact_duplicate": 0.03,
            "near_duplicate": 0.03, "watermark": 0.0, "blurred": 0.0}  # the last two are opt-in


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[object, list[tuple[str, str]], str]:
    """Draw 1-3 coloured shapes on a smooth random background; returns (PIL image, [(colour, shape)], bg)."""
    from PIL import Image, ImageDraw

    bg = str(rng.choice(list(COLORS)))
    # Low-frequency random tint field: makes each image's perceptual hash distinct.
    field = rng.integers(-40, 41, size=(4, 4, 3))
    base = np.clip(np.array(COLORS[bg])[None, None, :] + field, 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    objs = []
    for _ in range(int(rng.integers(1, 4))):
        colour = str(rng.choice([c for c in COLORS if c != bg]))
        shape = str(rng.choice(SHAPES))
        r = int(rng.integers(min(width, height) // 8, min(width, height) // 3))
        cx, cy = int(rng.integers(r, width - r + 1)), int(rng.integers(r, height - r + 1))
        _draw_shape(draw, shape, cx, cy, r, COLORS[colour])
        objs.append((colour, shape))
    return img, objs, bg


def _draw_shape(draw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "star":
        pts = [(cx + (r if k % 2 == 0 else r // 2) * np.cos(np.pi * k / 5 - np.pi / 2),
                cy + (r if k % 2 == 0 else r // 2) * np.sin(np.pi * k / 5 - np.pi / 2)) for k in range(10)]
        draw.polygon(pts, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, r // 4))
    else:  # cross
        w = max(2, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)


def caption_for(rng: np.random.Generator, objs, bg: str, lang: str = "en") -> str:
    if lang != "en":
        colours, shapes, template = TRANSLATIONS[lang]
        colour, shape = objs[0]
        return template.format(c=colours[colour], s=shapes[shape], b=colours[bg])
    parts = [f"a {c} {s}" for c, s in objs]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return str(rng.choice(EN_TEMPLATES)).format(objs=text, bg=bg)


def encode(img, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def generate(rows: int, seed: int = 0, mismatch: float = 0.0,
             fractions: dict | None = None) -> tuple[pa.Table, pa.Table]:
    """Return (samples, ground_truth) tables of ``rows`` rows."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    fractions = {**PROBLEMS, **(fractions or {})}
    if sum(fractions.values()) > 1.0 + 1e-9:  # one problem per row: more would silently plant fewer
        raise WinnowError(f"planted fractions add up to {sum(fractions.values()):.2f} of the rows (at most 1): "
                          + ", ".join(f"{k}={v}" for k, v in fractions.items() if v))
    plan = _assign_problems(rng, rows, fractions)
    uids = [f"s{seed}-{i:07d}" for i in range(rows)]
    images: list[bytes | None] = []
    captions: list[str | None] = []
    truth = {"uid": uids, "problem": [], "dup_of": [], "caption_matches": [], "objects": []}
    # rows with no planted problem: duplicate sources (a copy of a long-caption or watermarked row would
    # carry two problems, and the ground truth names one)
    clean: list[int] = []
    for i in range(rows):
        problem = plan[i]
        w, h = int(rng.integers(256, 641)), int(rng.integers(256, 641))
        if problem == "tiny_image":
            w, h = int(rng.integers(32, 150)), int(rng.integers(32, 150))
        elif problem == "extreme_aspect":
            short = int(rng.integers(200, 260))  # big enough to pass min_side: only the aspect ratio is wrong
            w, h = (int(short * rng.uniform(3.3, 4.5)), short)[:: 1 if rng.random() < 0.5 else -1]
        img, objs, bg = draw_scene(rng, w, h)
        if problem == "watermark":
            img = overlays.add_watermark(img, rng)
        elif problem == "blurred":
            img = overlays.blur(img, rng)
        fmt = "PNG" if rng.random() < 0.15 else "JPEG"
        data = encode(img, fmt)
        lang = str(rng.choice(list(TRANSLATIONS))) if problem == "non_english" else "en"
        caption = caption_for(rng, objs, bg, lang)
        dup_of = None
        if problem in ("exact_duplicate", "near_duplicate") and clean:
            src = int(rng.choice(clean))
            dup_of = uids[src]
            objs = truth["objects"][src]
            caption = captions[src] if rng.random() < 0.5 else caption_for(rng, objs, _bg_of(captions[src]))
            if problem == "exact_duplicate":
                data = images[src]
            else:
                im = Image.open(io.BytesIO(images[src])).convert("RGB")
                scale = float(rng.uniform(0.7, 1.3))
                im = im.resize((max(200, int(im.width * scale)), max(200, int(im.height * scale))), Image.BILINEAR)
                data = encode(im, "JPEG", quality=int(rng.integers(60, 90)))
        elif problem in ("exact_duplicate", "near_duplicate"):
            problem = None
        if problem == "corrupt_image":
            data = bytes(rng.integers(0, 256, size=min(len(data), 2048), dtype=np.uint8))
        elif problem == "zero_bytes":
            data = b""
        elif problem == "empty_caption":
            caption = "" if rng.random() < 0.5 else None
        elif problem == "long_caption":
            caption = " ".join([caption] * 400)
        if problem is None:
            clean.append(i)
        images.append(data)
        captions.append(caption)
        truth["problem"].append(problem)
        truth["dup_of"].append(dup_of)
        truth["caption_matches"].append(True)
        truth["objects"].append(objs)
    _swap_captions(rng, captions, truth, clean, mismatch)
    samples = pa.table({"uid": uids, "caption": pa.array(captions, pa.string()),
                        "image": pa.array(images, pa.binary())})
    truth["objects"] = [[f"{c} {s}" for c, s in o] for o in truth["objects"]]
    return samples, pa.table(truth)


def _bg_of(caption: str | None) -> str:
    for colour in COLORS:
        if caption and f"{colour} background" in caption or caption and f"{colour} backdrop" in caption:
            return colour
    return "white"


def _assign_problems(rng, rows: int, fractions: dict) -> list[str | None]:
    plan: list[str | None] = [None] * rows
    order = rng.permutation(rows)
    pos = 0
    for problem, frac in fractions.items():
        n = int(round(frac * rows))
        for i in order[pos:pos + n]:
            plan[int(i)] = problem
        pos += n
    return plan


def _swap_captions(rng, captions, truth, clean: list[int], fraction: float) -> None:
    """Give ``fraction`` of clean rows another row's caption (a derangement, so none keeps its own)."""
    n = int(round(fraction * len(captions)))
    candidates = list(clean)
    if n < 2 or len(candidates) < 2:
        return
    chosen = [candidates[int(j)] for j in rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)]
    originals = [captions[i] for i in chosen]
    for k, i in enumerate(chosen):  # rotate by one: row k gets row k+1's caption
        captions[i] = originals[(k + 1) % len(chosen)]
        truth["caption_matches"][i] = False


def write_sample(output: str, rows: int, shards: int = 1, seed: int = 0, mismatch: float = 0.0,
                 fractions: dict | None = None) -> dict:
    samples, truth = generate(rows, seed=seed, mismatch=mismatch, fractions=fractions)
    shards = max(1, min(shards, rows or 1))
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    paths = []
    for k in range(shards):
        path = os.path.join(output, f"shard-{k:05d}.parquet")
        write_parquet_atomic(samples.slice(bounds[k], bounds[k + 1] - bounds[k]), path)
        paths.append(path)
    write_parquet_atomic(truth, os.path.join(output, "ground_truth", "ground_truth.parquet"))
    counts = {p: truth["problem"].to_pylist().count(p) for p in PROBLEMS}
    counts = {p: n for p, n in counts.items() if n or PROBLEMS[p]}  # opt-in ones only when asked for
    counts["mismatched_caption"] = truth["caption_matches"].to_pylist().count(False)
    return {"shards": paths, "rows": rows, "planted": counts}
