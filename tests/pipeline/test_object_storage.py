"""A pipeline whose input, run directory and export live on a real S3 API server (moto, on 127.0.0.1).

The same pipeline as the Ray runner's tests (a map stage, a global barrier, a group barrier, and stages
that kill their worker once) runs with input and output on S3 and on local disk: manifests and exported
webdataset tars must be identical, on both runners, after a worker dies, and after the driver is SIGKILLed
mid-run and the same command is rerun.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import boto3
import pyarrow as pa
import pytest
import yaml

from tests.pipeline.runners.ray_data.test_runner import REPO, _kill_group, pipeline, register, run
from winnow.stages import storage

pytestmark = [pytest.mark.timeout(400)]
EXPORT = {"format": "webdataset", "samples_per_shard": 100}


@pytest.fixture(scope="module", autouse=True)
def _registered():
    from winnow import stages

    register()
    yield
    for name in ("test_caption_top", "test_caption_dup", "test_slow", "test_crash_once", "test_crash_once_actor"):
        stages.registry().pop(name, None)


@pytest.fixture(scope="module")
def pool(s3_server, sample_dir) -> str:
    """The sample's four Parquet shards uploaded to a fresh bucket: s3://BUCKET/pool."""
    bucket = f"pool-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    for name in sorted(os.listdir(sample_dir)):
        if name.endswith(".parquet"):
            storage.write_bytes((sample_dir / name).read_bytes(), f"s3://{bucket}/pool/{name}")
    return f"s3://{bucket}/pool"


@pytest.fixture(scope="module")
def on_disk(sample_dir, tmp_path_factory) -> dict:
    """The same pipeline on local disk, local runner: what every S3 run must equal."""
    out = tmp_path_factory.mktemp("disk") / "out"
    data = pipeline(sample_dir, out) | {"exports": [EXPORT]}
    run(data, "local")
    return {"manifest": manifest(str(out)), "export": export(str(out))}


def manifest(out: str) -> pa.Table:
    parts = storage.list_files(storage.join(out, "manifest"))
    assert parts, f"no manifest in {out}"
    return pa.concat_tables([storage.read_parquet(p) for p in parts]).sort_by("uid")


def export(out: str) -> dict[str, bytes]:
    folder = storage.join(out, "exports", "webdataset")
    return {os.path.basename(p): storage.read_bytes(p) for p in storage.list_files(folder)}


def _driver(data: dict, yaml_path, log_path) -> subprocess.Popen:
    """`winnow run --runner local` in its own process group (the S3 endpoint comes from the environment)."""
    yaml_path.write_text(yaml.safe_dump(data))
    code = ("import sys; from tests.pipeline.runners.ray_data.test_runner import register; register(); "
            "from winnow.pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-c", code, "run", str(yaml_path), "--runner", "local"], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _same_as_disk(out: str, on_disk: dict) -> None:
    assert manifest(out).equals(on_disk["manifest"]), "the S3 run's manifest differs from the local-disk run's"
    got = export(out)
    assert sorted(got) == sorted(on_disk["export"]) and "sizes.json" in got
    assert got == on_disk["export"], "exported tars differ from the local-disk export"


def test_local_runner_on_s3_equals_local_disk(pool, on_disk):
    out = f"{pool.rsplit('/', 1)[0]}/runs/local"
    run(pipeline(pool, out) | {"exports": [EXPORT]}, "local")
    _same_as_disk(out, on_disk)
    assert not any(".tmp-" in p for p in storage.list_files(out, recursive=True))  # nothing half-written left


@pytest.mark.ray
@pytest.mark.torture
def test_ray_on_s3_with_worker_deaths_equals_local_disk(ray_local, pool, on_disk, tmp_path):
    """Ray workers (started before the S3 endpoint was known to this process) read and write S3 with the
    driver's settings; a task worker and an actor each die once mid-stage and are retried."""
    out = f"{pool.rsplit('/', 1)[0]}/runs/ray"
    markers = tmp_path / "task-died", tmp_path / "actor-died"
    run(pipeline(pool, out, marker=str(markers[0]), marker_actor=str(markers[1])) | {"exports": [EXPORT]}, "ray")
    assert markers[0].exists() and markers[1].exists(), "the test stages never killed their worker"
    _same_as_disk(out, on_disk)
    assert not [p for p in storage.list_files(storage.join(out, "work"), recursive=True) if "/blocks" in p]


@pytest.mark.torture
def test_driver_killed_on_s3_then_rerun_resumes(pool, on_disk, tmp_path):
    """`winnow run` with input and output on S3, SIGKILLed after its first checkpoint object, then rerun
    (the local runner: the Ray runner's own kill-and-resume is tested on disk; here the store is the subject)."""
    out = f"{pool.rsplit('/', 1)[0]}/runs/killed"
    data = pipeline(pool, out, delay=0.1) | {"exports": [EXPORT]}
    seg0 = storage.join(out, "work", "seg-0")
    log = tmp_path / "driver.log"
    proc = _driver(data, tmp_path / "p.yaml", log)
    try:
        deadline = time.monotonic() + 150
        while not [p for p in storage.list_files(seg0) if p.endswith(".parquet") and "/part-" in p]:
            assert proc.poll() is None, f"driver ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 150 s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    assert not storage.exists(storage.join(out, "stats.json")), "the run finished before it was killed"
    done = [p for p in storage.list_files(seg0) if p.endswith(".parquet")]
    assert 0 < len(done) < 4
    before = {p: storage.stat(p) for p in done}
    proc = _driver(data, tmp_path / "p.yaml", log)
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        _kill_group(proc)
    _same_as_disk(out, on_disk)
    assert {p: storage.stat(p) for p in before} == before  # checkpoints on S3 kept, not redone


def test_stage_report_and_export_commands_take_s3_paths_and_the_endpoint_flag(pool, s3_server, monkeypatch, capsys):
    """`winnow stage`, `report` and `export` with s3:// paths, the endpoint given only by --endpoint-url."""
    from winnow.pipeline.cli import main

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    out = f"{pool.rsplit('/', 1)[0]}/runs/cli"
    flag = ["--endpoint-url", s3_server]
    try:
        assert main(["stage", "basic_filter", "--input", pool, "--output", out, "--kept", "--quiet", *flag]) == 0
        assert main(["report", out, *flag]) == 0
        assert main(["export", out, "--format", "parquet", *flag]) == 0
        printed = capsys.readouterr().out
        assert f"{out}/report.html" in printed and f"{out}/exports/parquet" in printed
        assert storage.read_text(storage.join(out, "report.html")).startswith("<!DOCTYPE html>")
        kept = storage.read_metadata(storage.list_files(storage.join(out, "exports", "parquet", "data"))[0]).num_rows
        assert kept == storage.read_json(storage.join(out, "stats.json"))["rows_kept"] > 0
    finally:
        storage.configure()  # later tests read the endpoint from the environment again
