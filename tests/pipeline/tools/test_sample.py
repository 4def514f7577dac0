import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from winnow.pipeline.tools import overlays
from winnow.pipeline.tools.sample import PROBLEMS, draw_scene, generate
from winnow.stages.errors import WinnowError


def test_planted_problems_in_known_proportions_and_deterministic():
    samples, truth = generate(500, seed=3, mismatch=0.2)
    again, _ = generate(500, seed=3, mismatch=0.2)
    assert samples.equals(again)
    counts = Counter(p for p in truth["problem"].to_pylist() if p)
    for problem, frac in PROBLEMS.items():
        assert counts[problem] == round(frac * 500), problem
    assert truth["caption_matches"].to_pylist().count(False) == 100
    assert len(set(samples["uid"].to_pylist())) == 500


def test_images_are_real_and_varied_and_problems_are_what_they_claim():
    samples, truth = generate(300, seed=11)
    problems = truth["problem"].to_pylist()
    images = samples["image"].to_pylist()
    sizes, formats = set(), Counter()
    for img, problem, dup in zip(images, problems, truth["dup_of"].to_pylist()):
        if problem == "zero_bytes":
            assert img == b""
            continue
        if problem == "corrupt_image":
            try:
                Image.open(io.BytesIO(img)).load()
                raise AssertionError("corrupt image decoded")
            except (OSError, SyntaxError, ValueError):
                continue
        im = Image.open(io.BytesIO(img))
        im.load()
        sizes.add(im.size)
        formats[im.format] += 1
        w, h = im.size
        if problem == "tiny_image":
            assert min(w, h) < 200
        if problem == "extreme_aspect":
            assert max(w, h) / min(w, h) > 3
        if problem == "exact_duplicate":
            assert img == images[int(dup.split("-")[1])]
    assert len(sizes) > 100 and formats["JPEG"] > 0 and formats["PNG"] > 0
    caps = samples["caption"].to_pylist()
    long_ones = [c for c, p in zip(caps, problems) if p == "long_caption"]
    assert long_ones and all(len(c) > 5000 for c in long_ones)
    assert all(c in (None, "") for c, p in zip(caps, problems) if p == "empty_caption")


def test_captions_describe_the_drawn_objects():
    samples, truth = generate(50, seed=2)
    for cap, objs, problem in zip(samples["caption"].to_pylist(), truth["objects"].to_pylist(),
                                  truth["problem"].to_pylist()):
        if problem is None:
            assert all(o in cap for o in objs), (cap, objs)


def test_watermarks_and_blur_are_planted_in_proportion_recorded_and_deterministic():
    fractions = {"watermark": 0.1, "blurred": 0.05}
    samples, truth = generate(400, seed=4, fractions=fractions)
    again, _ = generate(400, seed=4, fractions=fractions)
    assert samples.equals(again)
    counts = Counter(p for p in truth["problem"].to_pylist() if p)
    assert counts["watermark"] == 40 and counts["blurred"] == 20
    for problem, frac in PROBLEMS.items():  # the other problems keep their proportions
        if problem not in fractions:
            assert counts[problem] == round(frac * 400), problem
    for img, problem in zip(samples["image"].to_pylist(), truth["problem"].to_pylist()):
        if problem in fractions:
            assert min(Image.open(io.BytesIO(img)).size) >= 256  # a normal, decodable picture
    _, plain = generate(400, seed=4)
    assert not {"watermark", "blurred"} & set(plain["problem"].to_pylist())  # opt-in


def test_planted_fractions_over_one_are_refused():
    with pytest.raises(WinnowError, match="add up to 1.17"):
        generate(100, fractions={"watermark": 0.95})


def _scene(seed: int, w: int = 400, h: int = 300):
    return draw_scene(np.random.default_rng(seed), w, h)[0]


def test_watermark_is_semi_transparent_inside_the_centre_square_and_varies():
    centres = []
    for seed in range(40):
        img = _scene(seed, 480, 300)
        marked = overlays.add_watermark(img, np.random.default_rng(1000 + seed))
        a = np.asarray(img, np.float64)
        b = np.asarray(marked, np.float64)
        changed = np.abs(b - a).max(axis=2) > 2
        assert changed.mean() > 0.01, seed  # a visible mark, not a speck
        # semi-transparent: each changed pixel moved at most ~82% of the way to pure white or pure black
        moved = np.abs(b - a)[changed]
        room = np.maximum(np.abs(255 - a), np.abs(a))[changed]
        assert np.all(moved <= 0.83 * room + 2), seed
        ys, xs = np.nonzero(changed)
        tiled = changed[:, :90].any() and changed[:, -90:].any()
        if not tiled:  # a single mark lies in the central 300x300 square (x 90..390), what a centre crop keeps
            assert xs.min() >= 90 - 2 and xs.max() <= 390 + 2, seed
        centres.append((xs.mean(), ys.mean()))
    centres = np.array(centres)
    assert centres[:, 0].std() > 15 and centres[:, 1].std() > 15  # random places, not one spot


def test_blur_removes_fine_detail_and_keeps_the_size():
    img = _scene(7)
    blurred = overlays.blur(img, np.random.default_rng(7))
    assert blurred.size == img.size

    def detail(im):  # variance of the Laplacian: the usual sharpness measure
        g = np.asarray(im.convert("L"), np.float64)
        return (4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).var()

    assert detail(blurred) < detail(img) / 10
