"""A store that cannot be used fails in one line naming the URL (storage.StorageError, a WinnowError):
a missing bucket, refused credentials, no permission to write (moto enforcing IAM), a throttling store,
an endpoint that never answers and one nobody listens on, each bounded in attempts and time."""
from __future__ import annotations

import time

import pytest

from winnow.stages import storage

pytestmark = pytest.mark.torture

OPERATIONS = {
    "read": lambda url: storage.read_bytes(url),
    "read_parquet": lambda url: storage.read_parquet(url),
    "exists": lambda url: storage.exists(url),
    "list": lambda url: storage.list_files(url, recursive=True),
    "glob": lambda url: storage.glob(url + "/*.parquet"),
    "write": lambda url: storage.write_bytes(b"x", url),
    "ensure_writable": lambda url: storage.ensure_writable(url),
}
PHRASES = {"read": "cannot read", "read_parquet": "cannot read", "exists": "cannot look up", "list": "cannot list",
           "glob": "cannot list", "write": "cannot write", "ensure_writable": "not writable"}


@pytest.fixture(autouse=True)
def fresh_settings():
    storage.configure()
    yield
    storage.configure()


def fails(operation: str, url: str) -> str:
    with pytest.raises(storage.StorageError) as info:
        OPERATIONS[operation](url)
    message = str(info.value)
    assert "\n" not in message and url in message and PHRASES[operation] in message, message
    return message


@pytest.mark.parametrize("operation", sorted(set(OPERATIONS) - {"exists"}))
def test_missing_bucket(s3_server, operation):
    url = "s3://winnow-no-such-bucket/in"
    assert fails(operation, url).endswith("(no such bucket)")


def test_missing_bucket_is_not_an_existing_path(s3_server):
    assert not storage.exists("s3://winnow-no-such-bucket/in/x.parquet")


@pytest.mark.parametrize("operation", ["read", "exists", "list", "write", "ensure_writable"])
@pytest.mark.parametrize("key, secret", [("AKIAUNKNOWNKEY000000", "whatever"), ("reader", "wrong-secret")])
def test_credentials_refused(s3_auth_store, monkeypatch, operation, key, secret):
    """An unknown key id, or a known one with the wrong secret; a refused HEAD has no body, and the
    storage layer asks a listing which of the two 403s it was."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_store.reader_key if key == "reader" else key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.configure(endpoint_url=s3_auth_store.endpoint)
    target = "in/a.txt" if operation in ("read", "exists") else "in" if operation == "list" else "out"
    assert fails(operation, f"s3://{s3_auth_store.bucket}/{target}").endswith("(credentials refused)")


def test_read_only_credentials_read_but_cannot_write(s3_auth_store, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_store.reader_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth_store.reader_secret)
    storage.configure(endpoint_url=s3_auth_store.endpoint)
    bucket = f"s3://{s3_auth_store.bucket}"
    assert storage.read_bytes(f"{bucket}/in/a.txt") == b"readable"
    assert storage.list_files(f"{bucket}/in") == [f"{bucket}/in/a.txt"]
    assert fails("write", f"{bucket}/out/b.txt") == f"output {bucket}/out/b.txt: cannot write (access denied)"
    assert fails("ensure_writable", f"{bucket}/out") == f"output {bucket}/out: not writable (access denied)"
    with pytest.raises(storage.StorageError, match=r"^s3://winnow-auth/in/a.txt: cannot remove \(access denied\)$"):
        storage.remove(f"{bucket}/in/a.txt")
    assert not storage.exists(f"{bucket}/out/b.txt")
    assert storage.read_bytes(f"{bucket}/in/a.txt") == b"readable"


def bounded_retries(monkeypatch, endpoint: str, attempts: int = 3, request_timeout: int = 60) -> None:
    monkeypatch.setattr(storage.paths, "RETRIES", attempts)
    monkeypatch.setattr(storage.paths, "REQUEST_TIMEOUT", request_timeout)
    storage.configure(endpoint_url=endpoint)


@pytest.mark.parametrize("operation", ["read", "exists", "list", "write", "ensure_writable"])
def test_a_throttling_store_is_retried_with_backoff_then_given_up(slow_down_endpoint, monkeypatch, operation):
    bounded_retries(monkeypatch, slow_down_endpoint.url, attempts=3)
    t0 = time.monotonic()
    message = fails(operation, "s3://bkt/in/x")
    elapsed = time.monotonic() - t0
    assert message.endswith("(HTTP 503: the store is throttling or unavailable; gave up after 3 attempts)")
    assert slow_down_endpoint.requests == 3  # one first try and two retries, no more
    assert elapsed < 3 + 3  # backoff before the 2nd and 3rd attempts is at most 1 s and 2 s


@pytest.mark.parametrize("operation", ["read", "list", "write"])
def test_a_closed_port_is_cannot_connect_quickly(closed_endpoint, monkeypatch, operation):
    bounded_retries(monkeypatch, closed_endpoint, attempts=3)
    t0 = time.monotonic()
    message = fails(operation, "s3://bkt/in/x")
    assert message.endswith(f"(cannot connect to {closed_endpoint}; gave up after 3 attempts)")
    assert time.monotonic() - t0 < 3 + 3


@pytest.mark.parametrize("operation", ["read", "write"])
def test_an_endpoint_that_never_answers_times_out(silent_endpoint, monkeypatch, operation):
    bounded_retries(monkeypatch, silent_endpoint.url, attempts=2, request_timeout=1)
    t0 = time.monotonic()
    message = fails(operation, "s3://bkt/in/x")
    assert message.endswith(f"({silent_endpoint.url} did not answer within 1 s; gave up after 2 attempts)")
    assert silent_endpoint.requests == 2
    assert time.monotonic() - t0 < 2 * 1 + 1 + 3


def test_default_bounds_are_finite():
    """What a real run gets: a bounded number of attempts, each bounded in time."""
    assert 1 <= storage.RETRIES <= 10 and 0 < storage.CONNECT_TIMEOUT <= 30 and 0 < storage.REQUEST_TIMEOUT <= 120


@pytest.mark.parametrize("message, phrase", [
    ("When getting information for key 'a/b' in bucket 'bkt': AWS Error UNKNOWN (HTTP status 503) during "
     "HeadObject operation: No response body.", "HTTP 503: the store is throttling or unavailable"),
    ("When reading 'bkt/shard-00503.parquet': AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, "
     "Failure when receiving data from the peer", "the connection to http://127.0.0.1:9 failed"),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 28, Timeout was reached",
     "http://127.0.0.1:9 did not answer within"),
    ("AWS Error INTERNAL_FAILURE during PutObject operation: We encountered an internal error.",
     "the store failed (HTTP 5xx)"),
    ("When listing objects under key 'in/' in bucket 'b': AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2 "
     "operation: The AWS Access Key Id you provided does not exist in our records.", "credentials refused"),
    ("When listing objects under key 'in/' in bucket 'b': AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: "
     "The specified bucket does not exist", "no such bucket"),
])
def test_reasons_of_the_messages_arrow_gives(message, phrase):
    """Messages as Arrow's AWS SDK words them (these were seen against moto and the failing endpoints);
    a key that merely contains 503 is not a throttled store."""
    storage.configure(endpoint_url="http://127.0.0.1:9")
    assert storage.reason(OSError(message)).startswith(phrase)
