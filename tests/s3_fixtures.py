"""A real S3 API for tests, on 127.0.0.1 only: moto's server started once per test run as a subprocess (so Ray
workers and CLI subprocesses reach it over TCP exactly as they would reach a store), a fresh bucket per test,
a second moto server that enforces IAM (a read-only user, unknown keys refused), and two failing endpoints
of our own: one answering every request with 503 SlowDown (counting them), one where nobody listens.

``isolate_aws_env()`` runs when conftest imports this module: dummy credentials, no config files, no
instance-metadata lookups (AWS_EC2_METADATA_DISABLED keeps every SDK away from 169.254.169.254), so no
request of a test can leave 127.0.0.1 or use a developer's real credentials.
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

TEST_KEY, TEST_SECRET = "testing", "testing"
BUCKET_POLICY_READ_ONLY = "s3-read-only"


def isolate_aws_env() -> None:
    """Dummy credentials and nothing from the developer's AWS setup (profiles, endpoints, metadata)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        os.environ.pop(name, None)
    os.environ.update({
        "AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    })


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(endpoint: str, key: str = TEST_KEY, secret: str = TEST_SECRET, service: str = "s3"):
    """A boto3 client for the test's own server: one attempt, short timeouts (a test never waits long)."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30))


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 at a free port; stopped by ``close()``."""

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile()
        for _ in range(3):  # another process may take the free port between our probe and moto's bind
            port = free_port()
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=self.log, stderr=subprocess.STDOUT)
            self.endpoint = f"http://127.0.0.1:{port}"
            if self._wait_listening(port, seconds=30):
                return
            self.close()
        self.log.seek(0)
        raise RuntimeError(f"moto server did not start: {self.log.read()[-2000:].decode(errors='replace')}")

    def _wait_listening(self, port: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def enforce_auth(self) -> None:
        """From now on every request must be signed by a known key and allowed by its IAM policies."""
        import requests

        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API on 127.0.0.1, once per test run; AWS_ENDPOINT_URL_S3 points at it (subprocesses inherit
    it) until the session ends."""
    server = MotoServer()
    before = os.environ.get("AWS_ENDPOINT_URL_S3")
    os.environ["AWS_ENDPOINT_URL_S3"] = server.endpoint
    try:
        yield server.endpoint
    finally:
        if before is None:
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = before
        server.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, empty bucket for this test: returns ``s3://<name>``; emptied and deleted afterwards."""
    from winnow.stages import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    storage.configure()  # nothing a previous test configured overrides the environment
    name = f"winnow-test-{uuid.uuid4().hex[:12]}"
    s3 = client(s3_server)
    s3.create_bucket(Bucket=name)
    yield f"s3://{name}"
    storage.configure()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name, PaginationConfig={"MaxItems": 100_000}):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)


@dataclass
class AuthStore:
    endpoint: str
    bucket: str           # holds in/a.txt
    reader_key: str       # may Get and List the bucket, nothing else
    reader_secret: str


@pytest.fixture(scope="session")
def s3_auth_store():
    """A second moto server that enforces IAM: a bucket with one object, a user allowed only to read it."""
    server = MotoServer()
    try:
        bucket = "winnow-auth"
        s3, iam = client(server.endpoint), client(server.endpoint, service="iam")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"readable")
        iam.create_user(UserName="reader")
        # Get*/List*/Head* cover both AWS's action names (s3:GetObject, s3:ListBucket) and moto's, which
        # checks the operation's name (s3:HeadObject, s3:ListObjectsV2); nothing here allows a write.
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        iam.put_user_policy(UserName="reader", PolicyName=BUCKET_POLICY_READ_ONLY, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        server.enforce_auth()
        yield AuthStore(server.endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.close()


# -- failing endpoints of our own -------------------------------------------------------------------
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b'<Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>')


class FailingEndpoint:
    """An HTTP server on 127.0.0.1 answering every request with 503 SlowDown (an S3 XML error body), or,
    with ``silent=True``, accepting requests and never answering; ``requests`` counts what arrived (``hosts``
    and ``paths`` say where each was addressed)."""

    def __init__(self, silent: bool = False) -> None:
        self.requests, self.hosts, self.paths = 0, [], []
        self._lock, self._stop = threading.Lock(), threading.Event()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                with endpoint._lock:
                    endpoint.requests += 1
                    endpoint.hosts.append(self.headers.get("Host", ""))
                    endpoint.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if silent:
                    endpoint._stop.wait(60)  # bounded: the server's close() releases it at once
                    return
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOW_DOWN)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_down_endpoint():
    endpoint = FailingEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def silent_endpoint():
    endpoint = FailingEndpoint(silent=True)
    yield endpoint
    endpoint.close()


@pytest.fixture
def closed_endpoint() -> str:
    """An endpoint URL on 127.0.0.1 where nobody listens (a port just freed)."""
    return f"http://127.0.0.1:{free_port()}"
