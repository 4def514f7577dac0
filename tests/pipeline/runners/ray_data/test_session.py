"""Connecting to Ray: an address where no Ray answers is one line within $WINNOW_RAY_CONNECT_TIMEOUT."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from winnow.pipeline.runners.ray_data import session
from winnow.stages.errors import WinnowError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pipeline(sample_dir, tmp_path) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"input: {sample_dir}\noutput: {tmp_path / 'out'}\nstages:\n  - stage: basic_filter\n")
    return str(path)


@pytest.mark.torture
@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["host:port", "ray://host:port", "auto"])
def test_nothing_listening_is_one_line_within_the_timeout(pipeline, form):
    """It used to retry the GCS for over ten minutes, printing "Failed to connect to GCS" all along."""
    target = f"127.0.0.1:{_free_port()}"
    address = {"host:port": target, "ray://host:port": f"ray://{target}", "auto": "auto"}[form]
    env = {**os.environ, "WINNOW_RAY_CONNECT_TIMEOUT": "1.5", "RAY_ADDRESS": target if form == "auto" else ""}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "winnow.pipeline.cli", "run", pipeline, "--address", address],
                          cwd=REPO, capture_output=True, text=True, timeout=50, env=env)
    elapsed = time.monotonic() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == [lines[0]] and lines[0].startswith(f"winnow: error: cannot reach Ray at {address}: "), lines
    assert f"connection refused at {target} for 1.5 s" in lines[0] and "WINNOW_RAY_CONNECT_TIMEOUT" in lines[0]
    assert 1.5 <= elapsed < 30, elapsed  # waited out the timeout (a head may be booting), then stopped


@pytest.mark.torture
@pytest.mark.timeout(30)
def test_a_listener_that_is_not_ray_fails_at_once():
    """The dashboard port (HTTP/1.1) or a silent listener: ray.init would hang on it too."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    web.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        for port, bound in ((web.server_address[1], 5.0), (silent.getsockname()[1], 8.0)):
            t0 = time.monotonic()
            with pytest.raises(WinnowError, match=f"cannot reach Ray at 127.0.0.1:{port}: .* does not speak gRPC"):
                session.check_reachable(f"127.0.0.1:{port}", 2.0)
            assert time.monotonic() - t0 < bound
    finally:
        web.shutdown()
        silent.close()


@pytest.mark.timeout(30)
def test_connect_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(session.CONNECT_TIMEOUT_ENV, raising=False)
    assert session.connect_timeout() == session.DEFAULT_CONNECT_TIMEOUT == 30.0
    monkeypatch.setenv(session.CONNECT_TIMEOUT_ENV, "2.5")
    assert session.connect_timeout() == 2.5
    for bad in ("abc", "0", "-1", "nan", "inf"):
        monkeypatch.setenv(session.CONNECT_TIMEOUT_ENV, bad)
        with pytest.raises(WinnowError, match=f"WINNOW_RAY_CONNECT_TIMEOUT='{bad}': must be a number of seconds > 0"):
            session.connect_timeout()


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_live_gcs_passes_the_check(ray_local):
    """The check must never turn a reachable cluster away: the session's own GCS answers as gRPC."""
    address = ray_local.get_runtime_context().gcs_address
    t0 = time.monotonic()
    session.check_reachable(address, 10.0)
    assert time.monotonic() - t0 < 5
