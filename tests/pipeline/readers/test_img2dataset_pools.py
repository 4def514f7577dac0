"""Real img2dataset output (webdataset, parquet, files) made here against the loopback HTTP server, then a
winnow pipeline on each output folder: no request reaches the server again, uids and bytes are
img2dataset's, and each of its failures is in the manifest exactly once as a download rejection.

img2dataset starts its own spawned processes per call (~10-30 s on a loaded box), so the three pools are
made once for the module.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.stages.download.http_fixtures import FixtureServer
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards, read_shard
from winnow.pipeline.run import execute

FAILING = {"/status/404": "http_404", "/status/500": "http_5xx"}
# Without re-encoding img2dataset never decodes: an HTML page "succeeds" and basic_filter is what rejects it.
NOT_AN_IMAGE = "/html"
PHOTOS = 9


@pytest.fixture(scope="module")
def server(coco_dir):
    srv = FixtureServer(coco_dir).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pools(server, tmp_path_factory):
    """{format: (folder, input rows)}: img2dataset.download itself, 5 rows a shard, 2 failing URLs."""
    from img2dataset import download

    root = tmp_path_factory.mktemp("pools")
    urls = [server.url(f"/coco/{n}") for n in server.names[:PHOTOS]] + [server.url(p) for p in FAILING]
    urls.append(server.url(NOT_AN_IMAGE))
    rows = pa.table({"url": urls, "text": [f"a photo of a street scene number {i}" for i in range(len(urls))],
                     "uid": [hashlib.md5(u.encode()).hexdigest() for u in urls]})  # DataComp: 32 hex digits
    pq.write_table(rows, root / "metadata.parquet")
    out = {}
    for fmt in ("webdataset", "parquet", "files"):
        download(url_list=str(root / "metadata.parquet"), input_format="parquet", url_col="url", caption_col="text",
                 save_additional_columns=["uid"], output_format=fmt, output_folder=str(root / fmt),
                 processes_count=1, thread_count=4, number_sample_per_shard=5, resize_mode="no", timeout=5,
                 retries=0, enable_wandb=False, distributor="multiprocessing", compute_hash="sha256",
                 disable_all_reencoding=True)  # the served bytes, as winnow's download stage keeps them
        out[fmt] = (root / fmt, rows)
    return out


def run(folder, out, runner="local"):
    cfg = parse_pipeline({"input": str(folder), "write_kept": True, "stages": [{"stage": "basic_filter"}]})
    return execute(cfg, str(out), runner=runner, progress=False)


def read_out(out, part):
    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(os.path.join(out, part, "*.parquet")))],
                            promote_options="permissive")


def check_run(server, folder, rows, out, runner="local"):
    before = server.total_hits()
    stats = run(folder, out, runner)
    assert server.total_hits() == before  # every byte came from the pool, none from the network
    manifest, kept = read_out(out, "manifest"), read_out(out, "kept")
    uids = rows["uid"].to_pylist()
    assert sorted(manifest["uid"].to_pylist()) == sorted(uids)  # every input row exactly once
    assert stats["rows_in"] == len(uids)
    by_uid = {r["uid"]: r for r in manifest.to_pylist()}
    for url, uid in zip(rows["url"].to_pylist(), uids):
        path = url.split(str(server.port), 1)[1]
        if path in FAILING:
            assert (by_uid[uid]["reject_stage"], by_uid[uid]["reject_reason"]) == ("download", FAILING[path])
            assert by_uid[uid]["download_error"]  # img2dataset's own message
        elif path == NOT_AN_IMAGE:
            assert (by_uid[uid]["reject_stage"], by_uid[uid]["reject_reason"]) == ("basic_filter", "image_undecodable")
        else:
            assert by_uid[uid]["reject_stage"] is None, by_uid[uid]
    photos = {uid: server.photo_bytes[url.rsplit("/", 1)[1]] for url, uid in zip(rows["url"].to_pylist(), uids)
              if "/coco/" in url}
    assert {r["uid"]: r["image"] for r in kept.to_pylist()} == photos  # img2dataset's bytes, untouched
    own = read_out(folder, "")  # img2dataset's own Parquet, read without winnow: its sha256 of what it wrote
    assert {u: by_uid[u]["sha256"] for u in photos} == {
        r["uid"]: r["sha256"] for r in own.to_pylist() if r["uid"] in photos}
    assert all(by_uid[u]["sha256"] == hashlib.sha256(b).hexdigest() for u, b in photos.items())
    return manifest


@pytest.mark.timeout(400)
@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "files"])
def test_pipeline_on_img2dataset_output_downloads_nothing_again(pools, server, fmt, tmp_path):
    folder, rows = pools[fmt]
    shards = list_shards(str(folder))
    assert len(shards) == 3 and {s.format for s in shards} == {"webdataset" if fmt == "webdataset" else
                                                                 "parquet" if fmt == "parquet" else "files"}
    check_run(server, folder, rows, tmp_path / "out")


@pytest.mark.timeout(400)
def test_tar_rows_and_their_sources(pools):
    """The tar gives the bytes (with their real extension), as its .json describes them; the sidecar gives
    the failures; the brace pattern open_clip would be given reads the same shards."""
    folder, rows = pools["webdataset"]
    tables = [read_shard(s) for s in list_shards(f"{folder}/{{00000..00002}}.tar")]
    table = pa.concat_tables(tables, promote_options="permissive")
    assert sorted(table["uid"].to_pylist()) == sorted(rows["uid"].to_pylist())
    ok = table.filter(pc.is_null(table["reject_stage"]))
    assert set(ok["image_format"].to_pylist()) == {"jpg"} and ok.num_rows == PHOTOS + 1  # + the HTML page
    own = {}  # img2dataset's per-sample .json, read with tarfile: the sha256 of the bytes it wrote
    for tar_path in sorted(glob.glob(f"{folder}/*.tar")):
        with tarfile.open(tar_path) as tar:
            own.update({m["uid"]: m["sha256"] for m in (json.load(tar.extractfile(i)) for i in tar
                                                       if i.name.endswith(".json"))})
    assert {r["uid"]: hashlib.sha256(r["image"]).hexdigest() for r in ok.to_pylist()} == own
    assert table.filter(pc.is_valid(table["reject_stage"]))["image"].null_count == len(FAILING)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_runner_reads_tar_shards_the_same(pools, server, ray_local, tmp_path):
    folder, rows = pools["webdataset"]
    local = check_run(server, folder, rows, tmp_path / "local")
    ray = check_run(server, folder, rows, tmp_path / "ray", runner="ray")
    cols = ["uid", "reject_stage", "reject_reason", "width", "height", "sha256"]
    assert ray.select(cols).sort_by("uid").equals(local.select(cols).sort_by("uid"))


@pytest.mark.timeout(400)
def test_resume_reuses_tar_shards_and_notices_a_rewrite(pools, server, tmp_path):
    folder, rows = pools["webdataset"]
    work = tmp_path / "pool"
    os.makedirs(work)
    for f in os.listdir(folder):
        shutil.copy(folder / f, work / f)
    out = tmp_path / "out"
    run(work, out)
    keys = {s.path: s.key for s in list_shards(str(work))}
    assert keys == {s.path: s.key for s in list_shards(str(work))}  # stable
    tar = str(work / "00001.tar")
    data = bytearray(open(tar, "rb").read())
    data[-1] = data[-1]  # same bytes, new mtime: recomputed, never wrongly reused
    open(tar, "wb").write(bytes(data))
    assert {s.path: s.key for s in list_shards(str(work))}[tar] != keys[tar]
    stats = run(work, out)
    assert stats.get("resumed") == "resumed 2/3 shards; 1 new or changed"  # the untouched tars were reused
    check_run(server, work, rows, out)
