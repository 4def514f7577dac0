import io
from collections import Counter

from PIL import Image

from winnow.pipeline.tools.sample import PROBLEMS, generate


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
