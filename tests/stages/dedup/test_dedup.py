"""Exact and perceptual dedup through the real runners, across shards, on real photos and planted copies."""
import glob
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from winnow.pipeline import groups as local_group
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages.dedup.exact import UrlDedup
from winnow.stages.dedup.perceptual import PerceptualDedup
from winnow.stages.dedup.survivors import survivor_order
from winnow.stages.dedup.urls import normalize_url, normalize_urls
from winnow.stages.errors import WinnowError

# copy kinds the bar applies to (precision >= 0.99, recall >= 0.95), and the harder crops
EASY = ("jpeg", "resize", "bright", "png", "webp")


def run_pipeline(tmp_path, tables, stages, name="run", runner="local"):
    """Write ``tables`` as shards, run ``stages``, return the manifest as {uid: row}."""
    src = tmp_path / f"{name}-in"
    src.mkdir()
    for k, t in enumerate(tables):
        pq.write_table(t, src / f"part-{k}.parquet")
    out = tmp_path / f"{name}-out"
    cfg = parse_pipeline({"input": str(src), "stages": stages, "seed": 3, "write_kept": False})
    execute(cfg, str(out), runner=runner, progress=False)
    manifest = pq.read_table(out / "manifest")
    return {r["uid"]: r for r in manifest.to_pylist()}


def split(table, n_shards, seed):
    """Rows dealt to shards in a random order: survivors must not depend on it."""
    perm = np.random.default_rng(seed).permutation(table.num_rows)
    return [table.take(pa.array(np.sort(perm[k::n_shards]))) for k in range(n_shards)]


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted_pool(coco_dir):
    """50 COCO photos (uid cNN-0) plus planted copies of each (uid cNN-<kind>), and rows with no signature."""
    rng = np.random.default_rng(0)
    uids, images, source, kinds = [], [], [], []
    for k, path in enumerate(sorted(coco_dir.glob("*.jpg"))):
        data = path.read_bytes()
        im = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = im.size
        scale = float(rng.uniform(0.5, 2.0))
        cut = float(rng.uniform(0.02, 0.10))
        dx, dy = int(w * cut), int(h * cut)
        ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        copies = {
            "0": data,
            "jpeg": _encode(im, "JPEG", quality=int(rng.integers(50, 96))),
            "resize": _encode(im.resize((int(w * scale), int(h * scale)), Image.BICUBIC), "JPEG", quality=90),
            "bright": _encode(ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1))), "JPEG", quality=90),
            "png": _encode(im, "PNG", compress_level=1),
            "webp": _encode(im, "WEBP", quality=80, method=0),
            "crop": _encode(im.crop((ox, oy, ox + w - dx, oy + h - dy)), "JPEG", quality=90),
        }
        for kind, b in copies.items():
            uids.append(f"c{k:02d}-{kind}")
            images.append(b)
            source.append(k)
            kinds.append(kind)
    for u, b in [("z-none", None), ("z-empty", b""), ("z-garbage", b"\x89PNG garbage")]:
        uids.append(u)
        images.append(b)
        source.append(-1)
        kinds.append("nosig")
    table = pa.table({"uid": uids, "image": pa.array(images, pa.binary())})
    return table, dict(zip(uids, source)), dict(zip(uids, kinds))


def perceptual_metrics(manifest, source, kinds):
    rejected = [u for u, r in manifest.items() if r["reject_reason"] == "dup:phash"]
    correct = [u for u in rejected if source[manifest[u]["dup_of"]] == source[u]]
    precision = len(correct) / max(1, len(rejected))
    recall = {}
    for kind in set(kinds.values()) - {"0", "nosig"}:
        rows = [u for u in kinds if kinds[u] == kind]
        recall[kind] = sum(u in correct for u in rows) / len(rows)
    return precision, recall


def test_perceptual_dedup_precision_recall_on_coco_copies(tmp_path, planted_pool):
    table, source, kinds = planted_pool
    manifest = run_pipeline(tmp_path, split(table, 3, seed=1), [{"stage": "dedup_phash"}])
    precision, recall = perceptual_metrics(manifest, source, kinds)
    print(f"\nperceptual dedup radius 6: precision {precision:.3f}, recall by copy kind {recall}")
    assert precision >= 0.99
    easy = [u for u in kinds if kinds[u] in EASY]
    assert sum(manifest[u]["reject_reason"] == "dup:phash" for u in easy) / len(easy) >= 0.95
    for kind in EASY:
        assert recall[kind] >= 0.95, (kind, recall)
    # every original photo survives (distinct photos are far apart) and the survivor is the smallest uid
    originals = [u for u in kinds if kinds[u] == "0"]
    assert all(manifest[u]["reject_reason"] is None for u in originals)
    # dup_of names a row of the same photo, and following dup_of always ends at the kept original
    for u in easy:
        seen, v = set(), u
        while manifest[v]["dup_of"] is not None and v not in seen:
            seen.add(v)
            v = manifest[v]["dup_of"]
        assert v == f"c{source[u]:02d}-0", (u, v)
    # rows without a usable image pass through untouched: kept, no hash, no dup_of
    for u in ("z-none", "z-empty", "z-garbage"):
        assert manifest[u]["reject_reason"] is None and manifest[u]["phash"] is None and manifest[u]["dup_of"] is None


def test_perceptual_decisions_do_not_depend_on_sharding(tmp_path, planted_pool, monkeypatch):
    table = planted_pool[0]
    a = run_pipeline(tmp_path, split(table, 1, seed=5), [{"stage": "dedup_phash", "radius": 8}], "one")
    monkeypatch.setattr(local_group, "ROWS_PER_PARTITION", 60)  # the on-disk shuffle: 6 hash partitions
    b = run_pipeline(tmp_path, split(table, 4, seed=9)[::-1], [{"stage": "dedup_phash", "radius": 8}], "four")
    assert {u: (r["reject_reason"], r["dup_of"]) for u, r in a.items()} == \
        {u: (r["reject_reason"], r["dup_of"]) for u, r in b.items()}
    assert sum(r["reject_reason"] == "dup:phash" for r in a.values()) > 250


def test_larger_radius_finds_more_crops(tmp_path, planted_pool):
    table, source, kinds = planted_pool
    small = run_pipeline(tmp_path, [table], [{"stage": "dedup_phash", "radius": 2}], "r2")
    large = run_pipeline(tmp_path, [table], [{"stage": "dedup_phash", "radius": 10}], "r10")
    p_small, r_small = perceptual_metrics(small, source, kinds)
    p_large, r_large = perceptual_metrics(large, source, kinds)
    assert r_large["crop"] > r_small["crop"]
    assert p_small == 1.0 and p_large >= 0.99


def test_perceptual_survivor_policy(planted_pool):
    table = planted_pool[0].slice(0, 7)  # one photo and its six copies
    widths = pa.array([100, 900, 300, 200, 500, 400, 50], pa.int32())
    stage = PerceptualDedup(prefer="max:width")
    from winnow.pipeline.plan import group_live_rows
    from winnow.stages.base import run_on_live_rows
    from winnow.stages.columns import ensure_reject_columns

    t = run_on_live_rows(ensure_reject_columns(table.append_column("width", widths)), stage.prepare,
                         stage.produces())
    out = {r["uid"]: r for r in group_live_rows(stage, t).to_pylist()}
    kept = [u for u, r in out.items() if r["reject_reason"] is None]
    assert "c00-jpeg" in kept and "c00-0" not in kept  # the widest copy (900) survives, not the smallest uid
    assert out["c00-0"]["dup_of"] is not None


def test_normalize_url():
    same = ["https://www.Example.com:443/a%7Eb/c?b=2&a=1&utm_source=x#frag", "http://example.com/a~b/c?a=1&b=2",
            "  HTTP://EXAMPLE.COM:80/a%7eb/c?a=1&b=2&fbclid=zz  "]
    assert len({normalize_url(u, drop_params=["utm_*", "fbclid"]) for u in same}) == 1
    different = ["http://example.com/a/b", "http://example.com/a/B", "http://example.com:8080/a/b",
                 "http://other.com/a/b", "http://example.com/a/b?x=1"]
    assert len({normalize_url(u) for u in different}) == len(different)
    assert normalize_url("https://example.com", ignore_scheme=False) != normalize_url("http://example.com",
                                                                                      ignore_scheme=False)
    assert normalize_url("http://[::1]:99999/x") == "http://[::1]:99999/x"  # invalid port: compared as text


def test_vectorised_url_normalisation_equals_the_reference():
    urls = ["http://Example.COM/a/b.jpg", "HTTPS://www.EXAMPLE.com", "http://ex.com./p#frag", "http://...",
            "http://a/b c", "https://host:8080/x", "http://u@h.com/x", "http://h.com/a%7eb", "//x.com/a",
            "http://h.com/x?b=1&a=2&utm_x=3", None, "", "  ", "data:image/png;base64,xx", "ftp://h/x",
            "http://www.www.x/y", "http:///p", "http://x.com/:@!$&'()*+,;=-._~/", "http://x.com/\u00e9", " http://a/b"]
    for ignore_scheme in (True, False):
        for strip_www in (True, False):
            fast = normalize_urls(pa.array(urls), ignore_scheme, strip_www, ["utm_*"]).to_pylist()
            ref = [normalize_url(u, ignore_scheme, strip_www, ["utm_*"]) if u and u.strip() else None for u in urls]
            assert fast == ref


def test_exact_decide_groups_does_not_rely_on_row_order():
    groups = pa.table({"uid": ["b", "a", "c", "z", "y"], "url_key": [b"k1", b"k1", b"k1", b"k2", b"k2"],
                       "reject_stage": pa.nulls(5, pa.string()), "reject_reason": pa.nulls(5, pa.string()),
                       "dup_of": pa.nulls(5, pa.string())})
    out = UrlDedup().decide_groups(groups, "url_key").to_pylist()
    assert [r["dup_of"] for r in out] == ["a", None, "a", "y", None]
    assert [r["reject_reason"] for r in out] == ["dup:url", None, "dup:url", "dup:url", None]


def test_exact_dedup_url_then_image_only_live_rows_compete(tmp_path):
    t = pa.table({
        "uid": ["a", "b", "c", "d", "e", "f"],
        "url": ["http://x.org/1.jpg", "https://www.x.org/1.jpg", "http://x.org/2.jpg", None, "", "http://x.org/3.jpg"],
        "image": pa.array([b"img1", b"img2", b"img2", b"img3", b"img3", None], pa.binary()),
    })
    m = run_pipeline(tmp_path, split(t, 2, seed=0), [{"stage": "dedup_url"}, {"stage": "dedup_image"}])
    assert (m["b"]["reject_stage"], m["b"]["reject_reason"], m["b"]["dup_of"]) == ("dedup_url", "dup:url", "a")
    assert m["c"]["reject_reason"] is None  # its image twin b was already gone when images were compared
    assert (m["e"]["reject_reason"], m["e"]["dup_of"]) == ("dup:image", "d")  # no url: image still compared
    assert m["a"]["reject_reason"] is None and m["f"]["reject_reason"] is None


def test_exact_dedup_through_many_partitions_equals_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    n = 3000
    t = pa.table({"uid": [f"u{i:05d}" for i in rng.permutation(n)],
                  "url": [f"http://h.org/{int(v)}.jpg" for v in rng.integers(0, 900, n)],
                  "score": pa.array(rng.random(n))})
    stages = [{"stage": "dedup_url", "prefer": "max:score"}]
    one = run_pipeline(tmp_path, split(t, 3, seed=1), stages, "one")
    monkeypatch.setattr(local_group, "ROWS_PER_PARTITION", 400)
    many = run_pipeline(tmp_path, split(t, 5, seed=2), stages, "many")
    assert {u: (r["reject_reason"], r["dup_of"]) for u, r in one.items()} == \
        {u: (r["reject_reason"], r["dup_of"]) for u, r in many.items()}
    assert sum(r["reject_reason"] == "dup:url" for r in one.values()) == n - len(set(t["url"].to_pylist()))


def test_exact_dedup_survivor_by_score_and_uid_ties(tmp_path):
    t = pa.table({"uid": ["u3", "u1", "u2", "u4"], "url": ["http://a/x"] * 4,
                  "clip_score": pa.array([0.3, None, 0.3, 0.1], pa.float32())})
    m = run_pipeline(tmp_path, split(t, 3, seed=2), [{"stage": "dedup_url", "prefer": "max:clip_score"}])
    assert [u for u in sorted(m) if m[u]["reject_reason"] is None] == ["u2"]  # 0.3 tie -> smaller uid
    assert {m[u]["dup_of"] for u in ("u1", "u3", "u4")} == {"u2"}
    m = run_pipeline(tmp_path, [t], [{"stage": "dedup_url"}], "by-uid")
    assert [u for u in sorted(m) if m[u]["reject_reason"] is None] == ["u1"]


def test_bad_prefer_and_radius_fail_up_front():
    with pytest.raises(WinnowError, match="prefer"):
        UrlDedup(prefer="best")
    with pytest.raises(WinnowError, match="radius"):
        PerceptualDedup(radius=40)
    t = pa.table({"uid": ["a"], "s": ["x"]})
    with pytest.raises(WinnowError, match="not numeric"):
        survivor_order(t, "max:s")
    with pytest.raises(WinnowError, match="not found"):
        survivor_order(t, "max:nope")


def test_winnow_sample_planted_duplicates_are_all_found(tmp_path, sample_dir):
    truth = pq.read_table(sample_dir / "ground_truth" / "ground_truth.parquet").to_pylist()
    cfg = parse_pipeline({"input": str(sample_dir / "shard-*.parquet"), "write_kept": False,
                          "stages": [{"stage": "dedup_image"}, {"stage": "dedup_phash"}]})
    execute(cfg, str(tmp_path / "out"), progress=False)
    m = {r["uid"]: r for r in pq.read_table(tmp_path / "out" / "manifest").to_pylist()}
    planted = {"exact_duplicate": "dup:image", "near_duplicate": "dup:phash"}
    n = 0
    for row in truth:
        if row["problem"] in planted:
            got = m[row["uid"]]
            assert (got["reject_reason"], got["dup_of"]) == (planted[row["problem"]], row["dup_of"]), row
            n += 1
    assert n >= 15
    false_pos = [u for u, r in m.items() if r["reject_reason"] and
                 next(t for t in truth if t["uid"] == u)["problem"] not in planted]
    assert len(false_pos) <= 0.01 * len(m), false_pos


@pytest.mark.ray
@pytest.mark.parametrize("path", ["one task", "shuffle per key"])
def test_local_and_ray_runners_decide_the_same(tmp_path, planted_pool, ray_local, monkeypatch, path):
    from winnow.pipeline.runners.ray_data import group as ray_group

    if path == "shuffle per key":  # what a run over ray_group.ONE_TASK_ROWS rows does
        monkeypatch.setattr(ray_group, "ONE_TASK_ROWS", 0)
    table = planted_pool[0].slice(0, 140)  # 20 photos and their copies: Ray's fixed costs dominate anyway
    table = table.append_column("url", pa.array([f"http://h/{i % 120}" for i in range(table.num_rows)]))
    stages = [{"stage": "dedup_url"}, {"stage": "dedup_phash", "radius": 4}]
    shards = split(table, 3, seed=4)
    local = run_pipeline(tmp_path, shards, stages, "local")
    ray = run_pipeline(tmp_path, shards, stages, "ray", runner="ray")
    assert not glob.glob(str(tmp_path / "ray-out" / "work" / "*" / "group-*.tmp"))  # scratch copies removed
    assert {u: (r["reject_stage"], r["reject_reason"], r["dup_of"]) for u, r in local.items()} == \
        {u: (r["reject_stage"], r["reject_reason"], r["dup_of"]) for u, r in ray.items()}
    reasons = [r["reject_reason"] for r in ray.values()]
    assert reasons.count("dup:url") >= 15 and reasons.count("dup:phash") >= 60
