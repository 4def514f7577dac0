"""`winnow submit --wait` against a real two-node Ray cluster on 127.0.0.1.

The head (Jobs API, no CPUs of its own) and a worker node with its own temp dir are two `ray start
--block` processes; stopping them stops exactly what they started (never `ray stop`, which would
take every Ray on the machine with it). The job's manifest must equal a local run's, and the
stage's actors must have run on the worker node.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # the job's `python` must be this environment's (a real cluster installs winnow, see cluster.yaml)
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}


@pytest.fixture
def cluster(tmp_path):
    gcs_port, dash_port = _free_port(), _free_port()
    short = tempfile.mkdtemp(prefix="wr-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]

    def own_ports() -> list[str]:
        # two nodes on one host (and any other Ray here) must not fight over the agents' default ports
        return [arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                 "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                                 "--object-manager-port") for arg in (flag, str(_free_port()))]
    procs = []
    logs = [open(tmp_path / "head.log", "wb"), open(tmp_path / "worker.log", "wb")]
    try:
        procs.append(subprocess.Popen(
            [f"{BIN}/ray", "start", "--head", "--port", str(gcs_port), "--num-cpus", "0", "--include-dashboard",
             "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
             "--temp-dir", os.path.join(short, "head"), *own_ports(), *common],
            env=_env(), stdout=logs[0], stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True))
        _wait_for(lambda: _nodes(dash_port) >= 1, 90, "head node", tmp_path / "head.log", procs[0])
        procs.append(subprocess.Popen(
            [f"{BIN}/ray", "start", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "2",
             "--temp-dir", os.path.join(short, "worker"), *own_ports(), *common],
            env=_env(), stdout=logs[1], stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True))
        _wait_for(lambda: _nodes(dash_port) >= 2, 90, "worker node", tmp_path / "worker.log", procs[1])
        yield {"dashboard": f"http://127.0.0.1:{dash_port}"}
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:  # then whatever is left of that node (each node is its own process group)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        for f in logs:
            f.close()
        shutil.rmtree(short, ignore_errors=True)


def _nodes(dash_port: int) -> int:
    from ray.util.state import list_nodes

    try:
        return sum(n.state == "ALIVE" for n in list_nodes(address=f"http://127.0.0.1:{dash_port}", timeout=5))
    except Exception:
        return 0


def _wait_for(check, seconds: float, what: str, log, proc) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"{what} not up within {seconds}s:\n{open(log).read()[-2000:]}")
        time.sleep(1)


def _manifest(out) -> pa.Table:
    parts = sorted(glob.glob(os.path.join(str(out), "manifest", "*.parquet")))
    assert parts, f"no manifest in {out}"
    return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("uid")


def test_submit_wait_runs_on_the_cluster(cluster, sample_dir, tmp_path):
    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute

    pipeline = {"input": str(sample_dir), "output": str(tmp_path / "local"),
                "stages": [{"stage": "basic_filter", "min_words": 4}]}
    execute(parse_pipeline(pipeline), str(tmp_path / "local"), runner="local", progress=False)
    with open(tmp_path / "p.yaml", "w") as f:
        yaml.safe_dump(pipeline, f)
    out = tmp_path / "cluster"
    proc = subprocess.run(
        [sys.executable, "-m", "winnow.pipeline.cli", "submit", str(tmp_path / "p.yaml"), "--address",
         cluster["dashboard"], "--output", str(out), "--wait"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted job " in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "basic_filter" in proc.stdout  # the job's own progress lines came through the log stream
    got = _manifest(out)
    assert got.num_rows == 400
    assert got.equals(_manifest(tmp_path / "local"))

    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n.is_head_node for n in list_nodes(address=cluster["dashboard"])}
    actors = [a for a in list_actors(address=cluster["dashboard"], detail=True, limit=1000)
              if "Stage_basic_filter" in (a.class_name or "") and a.node_id]  # placed actors only
    assert actors and all(not nodes[a.node_id] for a in actors), "the stage did not run on the worker node"


def test_submit_unreachable_cluster_is_one_line(tmp_path, sample_dir):
    with open(tmp_path / "p.yaml", "w") as f:
        yaml.safe_dump({"input": str(sample_dir), "output": str(tmp_path / "o"),
                        "stages": [{"stage": "basic_filter"}]}, f)
    proc = subprocess.run(
        [sys.executable, "-m", "winnow.pipeline.cli", "submit", str(tmp_path / "p.yaml"), "--address",
         f"http://127.0.0.1:{_free_port()}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winnow: error: --address http://127.0.0.1:"), proc.stderr


def test_cluster_yaml_is_a_valid_launcher_config():
    """cluster.yaml passes Ray's own cluster-launcher schema; head does no work, workers install winnow."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(REPO, "cluster.yaml"), encoding="utf-8") as f:
        cfg = prepare_config(yaml.safe_load(f))
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))  # an instance with GPUs
    assert any("pip install" in c and "requirements.txt" in c for c in cfg["setup_commands"])
    # a regular (not editable) install: the wheel ships every package and its model configs
    commands = [c.split("#")[0].rstrip() for c in cfg["setup_commands"]]
    assert any(c.endswith("pip install -q --no-deps /home/ubuntu/winnow") for c in commands)
