"""Damaged and ill-formed webdataset pools: each ends as a per-row rejection or one line naming file and member.

The pools are written here the way img2dataset lays them out (``00000.tar`` of ``{key}.jpg/.txt/.json``,
``00000.parquet`` listing every row, ``00000_stats.json``) with real photos, then damaged.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards, read_shard
from winnow.pipeline.run import execute
from winnow.stages.errors import WinnowError


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def samples(photos, keys, uids=True):
    out = []
    for key in keys:
        meta = {"key": key, "status": "success", "uid": f"{int(key):032x}"} if uids else {"key": key}
        out += [(f"{key}.jpg", photos[int(key) % len(photos)]), (f"{key}.txt", f"a photo of a street {key}".encode()),
                (f"{key}.json", json.dumps(meta).encode())]
    return out


def make_pool(folder, photos, n=6, failed=(4,), members=None, stem="00000"):
    """An img2dataset-shaped shard: n rows, those in ``failed`` a 404 (only in the Parquet)."""
    os.makedirs(folder, exist_ok=True)
    keys = [f"{i:09d}" for i in range(n)]
    ok = [k for i, k in enumerate(keys) if i not in failed]
    write_tar(os.path.join(folder, f"{stem}.tar"), samples(photos, ok) if members is None else members(ok))
    pq.write_table(pa.table({
        "uid": [f"{i:032x}" for i in range(n)], "key": keys, "url": [f"http://h/{k}.jpg" for k in keys],
        "caption": [f"a photo of a street {k}" for k in keys],
        "status": ["failed_to_download" if i in failed else "success" for i in range(n)],
        "error_message": ["HTTP Error 404: Not Found" if i in failed else None for i in range(n)],
    }), os.path.join(folder, f"{stem}.parquet"))
    with open(os.path.join(folder, f"{stem}_stats.json"), "w") as f:
        json.dump({"count": n, "successes": n - len(failed)}, f)
    return folder


@pytest.fixture(scope="module")
def photos(coco_dir):
    return [p.read_bytes() for p in sorted(coco_dir.glob("*.jpg"))[:4]]


def read(folder):
    return pa.concat_tables([read_shard(s) for s in list_shards(str(folder))], promote_options="permissive")


def decisions(table):
    return dict(zip(table["key"].to_pylist(), zip(table["reject_stage"].to_pylist(),
                                                  table["reject_reason"].to_pylist())))


def test_stats_json_is_no_input_and_failures_are_download_rejections(tmp_path, photos):
    folder = make_pool(tmp_path / "pool", photos)
    shards = list_shards(str(folder))
    assert [(os.path.basename(s.path), s.format) for s in shards] == [("00000.tar", "webdataset")]
    table = read(folder)
    assert decisions(table)["000000004"] == ("download", "http_404")
    live = table.filter(pc.is_null(table["reject_stage"]))
    assert live["image"].to_pylist() == [photos[i % 4] for i in (0, 1, 2, 3, 5)]


@pytest.mark.torture
def test_truncated_member_rejects_the_rows_it_cut_off(tmp_path, photos, capsys):
    folder = make_pool(tmp_path / "pool", photos)
    tar = folder / "00000.tar"
    data = tar.read_bytes()
    cut = data.index(b"000000002.jpg") + 512 + 1000  # inside the third sample's image
    tar.write_bytes(data[:cut])
    got = decisions(read(folder))
    assert got == {"000000000": (None, None), "000000001": (None, None), "000000002": ("input", "tar_truncated"),
                   "000000003": ("input", "tar_truncated"), "000000004": ("download", "http_404"),
                   "000000005": ("input", "tar_truncated")}
    assert "00000.tar: the tar ends inside member '000000002.jpg'" in capsys.readouterr().err


@pytest.mark.torture
def test_truncated_lone_tar_rejects_the_partial_sample(tmp_path, photos):
    tar = tmp_path / "lone.tar"
    write_tar(tar, samples(photos, ["000000000", "000000001"]))
    data = tar.read_bytes()
    tar.write_bytes(data[:data.index(b"000000001.jpg") + 512 + 100])
    assert decisions(read(tar)) == {"000000000": (None, None), "000000001": ("input", "tar_truncated")}


@pytest.mark.torture
def test_two_samples_sharing_a_key_is_one_line(tmp_path, photos):
    folder = make_pool(tmp_path / "pool", photos, members=lambda ok: samples(photos, ok) + samples(photos, ok[:1]))
    with pytest.raises(WinnowError, match=r"00000.tar: member '000000000.jpg': key '000000000' appears again"):
        read(folder)
    write_tar(tmp_path / "dup.tar", [("a.jpg", photos[0]), ("a.jpg", photos[1])])
    with pytest.raises(WinnowError, match=r"dup.tar: member 'a.jpg': two samples share the key 'a'"):
        read(tmp_path / "dup.tar")


@pytest.mark.torture
def test_members_of_a_sample_apart_is_one_line(tmp_path, photos):
    def apart(ok):
        m = samples(photos, ok)
        return m[:2] + m[3:6] + [m[2]] + m[6:]  # 000000000.json after the next sample's members
    folder = make_pool(tmp_path / "pool", photos, members=apart)
    with pytest.raises(WinnowError, match=r"member '000000000.json': key '000000000' appears again after other"):
        read(folder)


@pytest.mark.torture
def test_json_that_is_not_json_rejects_its_row(tmp_path, photos):
    def broken(ok):
        return [(n, b"{not json" if n == "000000001.json" else d) for n, d in samples(photos, ok)]
    got = decisions(read(make_pool(tmp_path / "pool", photos, members=broken)))
    assert got["000000001"] == ("input", "bad_sample_json")
    assert [k for k, v in got.items() if v[0] is None] == ["000000000", "000000002", "000000003", "000000005"]


@pytest.mark.torture
def test_rows_missing_from_the_tar_and_tar_samples_missing_from_the_parquet(tmp_path, photos):
    got = decisions(read(make_pool(tmp_path / "a", photos, members=lambda ok: samples(photos, ok[1:]))))
    assert got["000000000"] == ("input", "missing_from_tar") and got["000000001"] == (None, None)
    no_image = [(n, d) for n, d in samples(photos, ["000000000"]) if not n.endswith(".jpg")]
    got = decisions(read(make_pool(tmp_path / "b", photos, n=1, failed=(), members=lambda ok: no_image)))
    assert got == {"000000000": ("input", "no_image_in_tar")}
    make_pool(tmp_path / "c", photos, members=lambda ok: samples(photos, ok + ["000000099"]))
    with pytest.raises(WinnowError, match=r"00000.tar: sample '000000099' is not in 00000.parquet"):
        read(tmp_path / "c")


@pytest.mark.torture
def test_tar_without_its_parquet(tmp_path, photos):
    folder = make_pool(tmp_path / "pool", photos)
    make_pool(folder, photos, stem="00001")
    os.remove(folder / "00001.parquet")
    with pytest.raises(WinnowError, match=r"00001.tar: no 00001.parquet beside it, in an img2dataset output folder"):
        list_shards(str(folder))
    with pytest.raises(WinnowError, match=r"00001.tar: no 00001.parquet"):
        list_shards(str(folder / "00001.tar"))
    # a lone tar (open_clip's, Ray Data's) needs none: its samples are the rows, uid from .json or the key
    lone = tmp_path / "lone"
    os.makedirs(lone)
    sized = [(n, json.dumps({"uid": f"{0:032x}", "width": 640, "height": 480, "exif": {"a": 1}}).encode()
              if n.endswith(".json") else d) for n, d in samples(photos, ["000000000"])]
    write_tar(lone / "shard.tar", sized + samples(photos, ["000000001"], uids=False)
              + [("000000002.png", b"\x89PNG fake"), ("000000002.txt", b"a drawing of a cat")])
    table = read(lone)
    assert table["uid"].to_pylist() == [f"{0:032x}", "000000001", "000000002"]
    assert table["image_format"].to_pylist() == ["jpg", "jpg", "png"]
    assert table["width"].to_pylist() == [640, None, None] and table["height"].to_pylist()[0] == 480
    assert table["caption"].to_pylist()[2] == "a drawing of a cat" and table["image"][0].as_py() == photos[0]


@pytest.mark.torture
def test_brace_patterns(tmp_path, photos):
    folder = make_pool(tmp_path / "shards", photos, stem="00000000")
    make_pool(folder, photos, stem="00000001")
    assert len(list_shards(f"{folder}/{{00000000..00000001}}.tar")) == 2
    with pytest.raises(WinnowError, match=r"names 2 files and none exists \(first: .*/00000005.tar\)"):
        list_shards(f"{folder}/{{00000005..00000006}}.tar")
    with pytest.raises(WinnowError, match=r"1 of the 3 files it names do not exist \(first: .*/00000002.tar\)"):
        list_shards(f"{folder}/{{00000000..00000002}}.tar")


@pytest.mark.torture
def test_not_a_tar_and_a_datacomp_root(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(WinnowError, match=r"junk.tar: cannot be read as a tar"):
        read(tmp_path / "junk.tar")
    os.makedirs(tmp_path / "pool" / "shards")
    with pytest.raises(WinnowError, match=r"use --input .*pool/shards"):
        list_shards(str(tmp_path / "pool"))


@pytest.mark.torture
@pytest.mark.timeout(120)
def test_pipeline_over_a_damaged_pool_keeps_every_row_once(tmp_path, photos):
    folder = make_pool(tmp_path / "pool", photos, n=8, failed=(1,))
    make_pool(folder, photos, n=8, failed=(), stem="00001",
              members=lambda ok: [(n, b"{" if n.endswith("3.json") else d) for n, d in samples(photos, ok)])
    pq.write_table(pq.read_table(folder / "00001.parquet").set_column(
        0, "uid", pa.array([f"1{i:031x}" for i in range(8)])), folder / "00001.parquet")
    data = (folder / "00000.tar").read_bytes()
    (folder / "00000.tar").write_bytes(data[:data.index(b"000000006.jpg") + 700])
    cfg = parse_pipeline({"input": str(folder), "stages": [{"stage": "basic_filter"}]})
    stats = execute(cfg, str(tmp_path / "out"), progress=False)
    manifest = pq.read_table(tmp_path / "out" / "manifest").to_pandas()
    assert stats["rows_in"] == 16 and len(manifest) == 16 and manifest["uid"].is_unique
    reasons = manifest.groupby(["reject_stage", "reject_reason"], dropna=False).size().to_dict()
    assert reasons[("download", "http_404")] == 1 and reasons[("input", "tar_truncated")] == 2
    assert reasons[("input", "bad_sample_json")] == 1
