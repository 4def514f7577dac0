"""`winnow stage` on a store that cannot be used: exit 2, one line naming the URL, nothing presented as done.
The stores are real: moto's server (and one enforcing IAM), a server answering 503 SlowDown, a closed port."""
from __future__ import annotations

import time

import pytest

from tests.s3_fixtures import client
from winnow.pipeline.cli import main
from winnow.stages import storage

pytestmark = pytest.mark.torture


@pytest.fixture(autouse=True)
def fresh_settings():
    storage.configure()
    yield
    storage.configure()


def one_line_error(capsys, *argv) -> str:
    rc = main(["stage", "basic_filter", *map(str, argv)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    assert lines[0].startswith("winnow: error: ")
    return lines[0]


@pytest.fixture
def shard_on_s3(s3_bucket, sample_dir) -> str:
    url = f"{s3_bucket}/in/shard-00000.parquet"
    storage.write_bytes((sample_dir / "shard-00000.parquet").read_bytes(), url)
    return url


def test_input_in_a_missing_bucket(capsys, s3_server, tmp_path):
    line = one_line_error(capsys, "--input", "s3://winnow-no-such-bucket/in", "--output", tmp_path / "o")
    assert "s3://winnow-no-such-bucket/in" in line and "no such bucket" in line
    assert not (tmp_path / "o" / "stats.json").exists()


def test_input_prefix_with_no_shards(capsys, s3_bucket, tmp_path):
    storage.write_bytes(b"not a shard", f"{s3_bucket}/in/readme.md")
    line = one_line_error(capsys, "--input", f"{s3_bucket}/in", "--output", tmp_path / "o")
    assert f"input {s3_bucket}/in: " in line


def test_output_in_a_missing_bucket(capsys, shard_on_s3):
    line = one_line_error(capsys, "--input", shard_on_s3, "--output", "s3://winnow-no-such-bucket/out")
    assert line == "winnow: error: output s3://winnow-no-such-bucket/out: not writable (no such bucket)"


def test_unknown_credentials(capsys, s3_auth_store, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    url = f"s3://{s3_auth_store.bucket}/in"
    line = one_line_error(capsys, "--input", url, "--output", tmp_path / "o", "--endpoint-url", s3_auth_store.endpoint)
    assert url in line and "credentials refused" in line


def test_read_only_credentials_cannot_write_the_run(capsys, s3_auth_store, monkeypatch, sample_dir):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_store.reader_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth_store.reader_secret)
    out = f"s3://{s3_auth_store.bucket}/runs/o"
    line = one_line_error(capsys, "--input", sample_dir / "shard-00000.parquet", "--output", out,
                          "--endpoint-url", s3_auth_store.endpoint)
    assert line == f"winnow: error: output {out}: not writable (access denied)"
    admin = client(s3_auth_store.endpoint, s3_auth_store.reader_key, s3_auth_store.reader_secret)
    assert admin.list_objects_v2(Bucket=s3_auth_store.bucket, Prefix="runs/")["KeyCount"] == 0


def test_a_throttling_store_gives_up_in_bounded_time(capsys, slow_down_endpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(storage.paths, "RETRIES", 3)
    t0 = time.monotonic()
    line = one_line_error(capsys, "--input", "s3://bkt/in", "--output", tmp_path / "o",
                          "--endpoint-url", slow_down_endpoint.url)
    assert "s3://bkt/in" in line and "throttling" in line and "gave up after 3 attempts" in line
    assert slow_down_endpoint.requests <= 2 * 3  # at most a lookup and a listing, each tried 3 times
    assert time.monotonic() - t0 < 2 * 3 + 5


def test_an_endpoint_nobody_listens_on(capsys, closed_endpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(storage.paths, "RETRIES", 2)
    t0 = time.monotonic()
    line = one_line_error(capsys, "--input", "s3://bkt/in", "--output", tmp_path / "o",
                          "--endpoint-url", closed_endpoint)
    assert "s3://bkt/in" in line and f"cannot connect to {closed_endpoint}" in line
    assert time.monotonic() - t0 < 10
