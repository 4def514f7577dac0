"""Eval-set decontamination: pool copies of eval photos are rejected, everything else is kept."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute
from winnow.stages.dedup.decontaminate import Decontaminate
from winnow.stages.errors import WinnowError


def _reencode(data: bytes, scale: float, quality: int) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((int(im.width * scale), int(im.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _run(tmp_path, pool: pa.Table, params: dict, name="out"):
    src = tmp_path / f"{name}-in"
    src.mkdir()
    pq.write_table(pool.slice(0, pool.num_rows // 2), src / "a.parquet")
    pq.write_table(pool.slice(pool.num_rows // 2), src / "b.parquet")
    cfg = parse_pipeline({"input": str(src), "write_kept": False, "stages": [{"stage": "decontaminate", **params}]})
    execute(cfg, str(tmp_path / name), progress=False)
    return {r["uid"]: r for r in pq.read_table(tmp_path / name / "manifest").to_pylist()}


@pytest.fixture(scope="module")
def photos(coco_dir):
    return [(p.name, p.read_bytes()) for p in sorted(coco_dir.glob("*.jpg"))]


def test_copies_of_eval_images_in_a_folder_are_rejected(tmp_path, photos):
    eval_dir = tmp_path / "eval" / "val2017"
    eval_dir.mkdir(parents=True)
    for name, data in photos[:10]:
        (eval_dir / name).write_bytes(data)
    (tmp_path / "eval" / "README.txt").write_text("not an image")
    uids, images = [], []
    for name, data in photos[10:]:  # distinct photos: kept
        uids.append(f"clean-{name}")
        images.append(data)
    for k, (name, data) in enumerate(photos[:10]):  # copies of eval photos: rejected
        uids.append(f"copy-{name}")
        images.append(_reencode(data, [0.5, 0.8, 1.5][k % 3], [55, 75, 92][k % 3]))
    uids += ["none", "broken"]
    images += [None, b"\xff\xd8\xff\xe0 truncated"]
    m = _run(tmp_path, pa.table({"uid": uids, "image": pa.array(images, pa.binary())}),
             {"eval_images": str(tmp_path / "eval")})
    for name, _ in photos[:10]:
        row = m[f"copy-{name}"]
        assert (row["reject_stage"], row["reject_reason"], row["dup_of"]) == \
            ("decontaminate", "dup:eval", f"eval:val2017/{name}")
    assert all(m[f"clean-{name}"]["reject_reason"] is None for name, _ in photos[10:])
    assert m["none"]["reject_reason"] is None and m["broken"]["reject_reason"] is None
    assert m[f"clean-{photos[10][0]}"]["phash"] is not None


def test_parquet_eval_set_with_uids(tmp_path, photos):
    eval_path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"uid": [f"coco-{n}" for n, _ in photos[:5]],
                             "image": pa.array([d for _, d in photos[:5]], pa.binary())}), eval_path)
    pool = pa.table({"uid": ["p0", "p1", "p2"],
                     "image": pa.array([photos[3][1], photos[20][1], _reencode(photos[0][1], 1.2, 80)], pa.binary())})
    m = _run(tmp_path, pool, {"eval_images": str(eval_path), "radius": 4})
    assert m["p0"]["dup_of"] == f"eval:coco-{photos[3][0]}" and m["p0"]["reject_reason"] == "dup:eval"
    assert m["p1"]["reject_reason"] is None
    assert m["p2"]["dup_of"] == f"eval:coco-{photos[0][0]}"


def test_embedding_similarity_matches(tmp_path):
    rng = np.random.default_rng(0)
    ev = rng.normal(size=(20, 32)).astype(np.float32)
    pool_vecs = np.concatenate([ev[:5] + rng.normal(size=(5, 32)).astype(np.float32) * 0.05,  # near eval items
                                rng.normal(size=(30, 32)).astype(np.float32)])  # unrelated
    eval_path = tmp_path / "eval_emb.parquet"
    pq.write_table(pa.table({"uid": [f"ev{i}" for i in range(20)],
                             "emb": pa.FixedSizeListArray.from_arrays(pa.array(ev.ravel()), 32)}), eval_path)
    pool = pa.table({"uid": [f"p{i:02d}" for i in range(35)], "url": [f"http://h/{i}" for i in range(35)],
                     "clip_emb": pa.FixedSizeListArray.from_arrays(pa.array(pool_vecs.ravel()), 32)})
    m = _run(tmp_path, pool, {"eval_images": str(eval_path), "radius": -1, "min_similarity": 0.95,
                              "eval_embedding_field": "emb", "embedding_column": "clip_emb"})
    assert [m[f"p{i:02d}"]["dup_of"] for i in range(5)] == [f"eval:ev{i}" for i in range(5)]
    assert all(m[f"p{i:02d}"]["reject_reason"] is None for i in range(5, 35))
    assert "phash" not in m["p00"]  # pHash matching was off


def test_configuration_errors(tmp_path):
    with pytest.raises(WinnowError, match="eval_images"):
        Decontaminate()
    with pytest.raises(WinnowError, match="nothing to compare"):
        Decontaminate(eval_images="x", radius=-1)
    with pytest.raises(WinnowError, match="eval_embedding_field"):
        Decontaminate(eval_images="x", min_similarity=0.9, embedding_column="e")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WinnowError, match="no image files"):
        Decontaminate(eval_images=str(tmp_path / "empty")).setup()
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(WinnowError, match="not a folder of images or readable Parquet"):
        Decontaminate(eval_images=str(tmp_path / "bad.parquet")).setup()
