"""stages/storage.py on local disk and on a real S3 API (moto's server on 127.0.0.1): every test that takes
``root`` runs on both and expects the same answers, spelled in the root's own scheme."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.s3_fixtures import FailingEndpoint, client
from winnow.stages import storage
from winnow.stages.errors import WinnowError

MULTIPART = 12 * 2**20  # Arrow uploads in 10 MiB parts: this object takes two


@pytest.fixture(autouse=True)
def fresh_settings():
    """No test's configure() leaks into the next one."""
    storage.configure()
    yield
    storage.configure()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A folder on local disk, or a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def put(root: str, *names: str) -> None:
    for name in names:
        storage.write_bytes(name.encode(), storage.join(root, name))


def rel(root: str, paths: list[str]) -> list[str]:
    return [p[len(root) + 1:] for p in paths]


def test_bytes_text_and_json_round_trip(root):
    storage.write_bytes(b"\x00bytes", storage.join(root, "a.bin"))
    storage.write_json({"k": [1, 2]}, storage.join(root, "sub", "a.json"))
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00bytes"
    assert storage.getsize(storage.join(root, "a.bin")) == 6
    assert storage.read_json(storage.join(root, "sub", "a.json")) == {"k": [1, 2]}
    assert storage.read_text(storage.join(root, "sub", "a.json")).startswith("{")
    storage.write_bytes(b"v2", storage.join(root, "a.bin"))  # a rewrite replaces the whole object
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"v2"
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(storage.join(root, "missing.bin"))
    with pytest.raises(FileNotFoundError):
        storage.getsize(storage.join(root, "missing.bin"))


@pytest.mark.parametrize("failure", [OSError("disk full"), ValueError("bad row")])
def test_failing_write_leaves_nothing_under_the_final_name(root, failure, tmp_path, monkeypatch):
    target = storage.join(root, "part-0.parquet")
    uploads = tmp_path / "uploads"  # a store's upload starts as a local temp file: here, where we can see it
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise failure

    expected = WinnowError if isinstance(failure, OSError) else ValueError
    with pytest.raises(expected) as info:
        storage.atomic_write(target, write)
    if expected is WinnowError:
        assert str(info.value) == f"output {target}: cannot write (disk full)"
    assert not storage.exists(target)
    assert storage.listdir(root) == []  # no temp file beside it either
    assert list(uploads.iterdir()) == []

    storage.write_bytes(b"whole", target)  # a failed rewrite leaves the previous object whole
    with pytest.raises(expected):
        storage.atomic_write(target, write)
    assert storage.read_bytes(target) == b"whole"


def test_multipart_sized_object_round_trips(root):
    data = np.random.default_rng(0).bytes(MULTIPART)
    storage.write_bytes(data, storage.join(root, "big.bin"))
    assert storage.getsize(storage.join(root, "big.bin")) == MULTIPART
    assert storage.read_bytes(storage.join(root, "big.bin")) == data
    if storage.is_remote(root):  # it really went up in parts: a multipart ETag ends in -<parts>
        bucket, key = root[len("s3://"):].split("/", 1)
        etag = client(os.environ["AWS_ENDPOINT_URL_S3"]).head_object(Bucket=bucket, Key=f"{key}/big.bin")["ETag"]
        assert re.search(r"-2\"?$", etag), etag


def test_exists_isfile_isdir_on_objects_and_prefixes(root):
    put(root, "a/b/c.txt")
    j = lambda *p: storage.join(root, *p)  # noqa: E731
    assert storage.exists(j("a")) and storage.isdir(j("a")) and not storage.isfile(j("a"))
    assert storage.isdir(j("a", "b")) and storage.exists(j("a", "b"))
    assert storage.isfile(j("a", "b", "c.txt")) and not storage.isdir(j("a", "b", "c.txt"))
    for missing in (j("a", "b", "c"), j("a", "b", "c.txt.tmp"), j("zz"), j("a", "zz", "c.txt")):
        assert not storage.exists(missing) and not storage.isfile(missing) and not storage.isdir(missing)


def test_listdir_and_list_files(root):
    put(root, "a/1.parquet", "a/2.txt", "a/sub/3.parquet", "b.txt", "ab/4.txt")
    assert storage.listdir(root) == ["a", "ab", "b.txt"]
    assert storage.listdir(storage.join(root, "a")) == ["1.parquet", "2.txt", "sub"]
    assert rel(root, storage.list_files(storage.join(root, "a"))) == ["a/1.parquet", "a/2.txt"]
    assert rel(root, storage.list_files(storage.join(root, "a"), recursive=True)) == \
        ["a/1.parquet", "a/2.txt", "a/sub/3.parquet"]
    assert storage.listdir(storage.join(root, "nothing")) == []
    assert storage.list_files(storage.join(root, "nothing"), recursive=True) == []
    assert storage.listdir(storage.join(root, "b.txt")) == []


@pytest.mark.parametrize("pattern, expected", [
    ("a/*.parquet", ["a/1.parquet"]),
    ("a/?.txt", ["a/2.txt"]),
    ("a/[13].*", ["a/1.parquet"]),
    ("*/*.parquet", ["a/1.parquet"]),                       # one level: a/sub/3.parquet is deeper
    ("a/*/*.parquet", ["a/sub/3.parquet"]),
    ("a/**/*.parquet", ["a/1.parquet", "a/sub/3.parquet"]),  # ** is zero or more levels
    ("**/*.txt", ["a/2.txt", "ab/4.txt", "b.txt"]),
    ("a/*", ["a/1.parquet", "a/2.txt"]),                    # a wildcard never matches a leading dot...
    ("a/.*", ["a/.hidden"]),                                # ...a pattern that starts with one does
    ("a/sub/3.parquet", ["a/sub/3.parquet"]),
    ("a/*.csv", []),
])
def test_glob_matches_as_python_glob_does(root, pattern, expected):
    put(root, "a/1.parquet", "a/2.txt", "a/.hidden", "a/sub/3.parquet", "b.txt", "ab/4.txt")
    assert rel(root, storage.glob(storage.join(root, pattern))) == expected


def test_parquet_readers(root):
    table = pa.table({"uid": [f"u{i}" for i in range(1000)], "x": list(range(1000))})
    path = storage.join(root, "t.parquet")
    storage.atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=300))
    assert storage.read_parquet(path).equals(table)
    assert storage.read_parquet(path, columns=["x"]).column_names == ["x"]
    assert storage.read_schema(path) == table.schema
    meta = storage.read_metadata(path)
    assert (meta.num_rows, meta.num_row_groups) == (1000, 4)
    pf = storage.parquet_file(path)
    assert sum(b.num_rows for b in pf.iter_batches(batch_size=128)) == 1000
    storage.write_parquet(table.slice(0, 5), path)
    assert storage.read_parquet(path).num_rows == 5


def test_remove_and_rmtree(root):
    put(root, "run/a.txt", "run/deep/b.txt", "run-sibling/c.txt", "keep.txt")
    storage.remove(storage.join(root, "keep.txt"))
    storage.remove(storage.join(root, "keep.txt"))  # gone already is fine
    assert not storage.exists(storage.join(root, "keep.txt"))
    storage.rmtree(storage.join(root, "run"))
    storage.rmtree(storage.join(root, "run"))  # absent is fine
    assert storage.listdir(root) == ["run-sibling"]  # a prefix that merely starts alike is untouched
    assert storage.read_bytes(storage.join(root, "run-sibling", "c.txt")) == b"run-sibling/c.txt"


def test_rmtree_of_a_bucket_root_empties_it_and_keeps_the_bucket(s3_bucket):
    put(s3_bucket, "x/1.txt", "2.txt")
    storage.rmtree(s3_bucket)
    assert storage.listdir(s3_bucket) == []
    client(os.environ["AWS_ENDPOINT_URL_S3"]).head_bucket(Bucket=s3_bucket[len("s3://"):])


def test_ensure_writable_leaves_no_probe(root):
    storage.ensure_writable(root)
    assert storage.listdir(root) == []


def test_ensure_writable_refuses_a_local_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WinnowError, match=rf"^output {re.escape(str(tmp_path))}/file/out: not writable \("):
        storage.ensure_writable(str(tmp_path / "file" / "out"))


def test_fsspec_schemes_go_through_the_bridge():
    """memory:// has no Arrow filesystem of its own: fsspec's, wrapped by PyFileSystem(FSSpecHandler)."""
    base = "memory://winnow-bridge-test"
    storage.rmtree(base)
    table = pa.table({"a": [1, 2, 3]})
    storage.write_parquet(table, f"{base}/d/t.parquet")
    storage.write_bytes(b"hi", f"{base}/d/x.txt")
    assert storage.read_parquet(f"{base}/d/t.parquet").equals(table)
    assert storage.read_schema(f"{base}/d/t.parquet") == table.schema
    assert storage.read_bytes(f"{base}/d/x.txt") == b"hi"
    assert storage.listdir(base) == ["d"] and storage.isdir(f"{base}/d") and storage.isfile(f"{base}/d/x.txt")
    assert storage.list_files(f"{base}/d") == [f"{base}/d/t.parquet", f"{base}/d/x.txt"]
    assert storage.glob(f"{base}/d/*.txt") == [f"{base}/d/x.txt"]
    storage.rmtree(base)
    assert not storage.exists(f"{base}/d/x.txt")


def test_unknown_scheme_is_one_line():
    with pytest.raises(WinnowError, match=r"^nosuchscheme://b/x: no filesystem for the scheme 'nosuchscheme://'"):
        storage.read_bytes("nosuchscheme://b/x")


# -- endpoints ----------------------------------------------------------------------------------------
def test_endpoint_precedence(monkeypatch):
    """configure() (the pipeline's storage: key) > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL, as boto3 reads them."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert storage.current().endpoint_url == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert storage.current().endpoint_url == "http://127.0.0.1:2"
    storage.configure(endpoint_url="http://127.0.0.1:3", region="eu-west-1")
    assert storage.current() == storage.Settings("http://127.0.0.1:3", "eu-west-1")
    storage.configure()
    assert storage.current().endpoint_url == "http://127.0.0.1:2"


def test_the_s3_endpoint_variable_wins_over_the_general_one(s3_bucket, monkeypatch, closed_endpoint):
    put(s3_bucket, "x.txt")
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_endpoint)  # nobody listens: used, it would fail
    assert storage.read_bytes(f"{s3_bucket}/x.txt") == b"x.txt"


def test_configure_wins_over_the_environment(s3_bucket, s3_server, monkeypatch, closed_endpoint):
    put(s3_bucket, "x.txt")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_endpoint)
    storage.configure(endpoint_url=s3_server)
    assert storage.read_bytes(f"{s3_bucket}/x.txt") == b"x.txt"


def test_requests_go_to_the_endpoint_path_style(monkeypatch):
    """Every request reaches our endpoint, addressed to it (not to <bucket>.s3.amazonaws.com)."""
    endpoint = FailingEndpoint()
    monkeypatch.setattr(storage.paths, "RETRIES", 2)
    try:
        storage.configure(endpoint_url=endpoint.url)
        with pytest.raises(WinnowError):
            storage.exists("s3://some-bucket/key")
        assert endpoint.requests >= 1
        assert set(endpoint.hosts) == {endpoint.url[len("http://"):]}
        assert all(p.startswith("/some-bucket/") for p in endpoint.paths), endpoint.paths
    finally:
        endpoint.close()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_no_connection_leaves_loopback(s3_bucket, tmp_path):
    """Every connect() of a process that writes, lists, reads and finds nothing on S3 goes to 127.0.0.1:
    no instance-metadata address, no DNS, no AWS host (AWS_EC2_METADATA_DISABLED and the endpoint hold)."""
    script = (f"from winnow.stages import storage\n"
              f"storage.write_bytes(b'1', '{s3_bucket}/a/x')\n"
              f"assert storage.list_files('{s3_bucket}/a') == ['{s3_bucket}/a/x']\n"
              f"assert storage.read_bytes('{s3_bucket}/a/x') == b'1'\n"
              f"assert not storage.exists('{s3_bucket}/a/missing')\n")
    log = tmp_path / "connect.log"
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log), sys.executable, "-c", script],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    inet = re.findall(r"sa_family=AF_INET6?,[^}]*\}", log.read_text())
    assert inet, "no connection traced"
    outside = [c for c in inet if 'inet_addr("127.0.0.1")' not in c and '"::1"' not in c]
    assert outside == []


@pytest.mark.ray
def test_apply_gives_a_ray_worker_the_drivers_endpoint(ray_local, s3_bucket):
    """A worker whose environment has no endpoint reaches the store once it applies the driver's settings."""
    put(s3_bucket, "x.txt")
    settings = storage.current()

    @ray_local.remote
    def on_worker(settings: storage.Settings, url: str):
        from winnow.stages import storage as worker_storage

        saved = {k: os.environ.pop(k, None) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")}
        try:
            worker_storage.configure()
            before = worker_storage.current().endpoint_url
            worker_storage.apply(settings)
            return before, worker_storage.read_bytes(url)
        finally:
            os.environ.update({k: v for k, v in saved.items() if v is not None})
            worker_storage.configure()

    before, data = ray_local.get(on_worker.remote(settings, f"{s3_bucket}/x.txt"), timeout=120)
    assert before == "" and data == b"x.txt"
