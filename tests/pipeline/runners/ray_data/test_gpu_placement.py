"""GPU resolution and placement against a real local Ray cluster on 127.0.0.1 (docs/ray.md, "GPUs").

One cluster for the module: a head with no CPUs and a CPU worker node, then (for the later tests) a
third node that declares one logical GPU (``--num-gpus 1``; this machine has no CUDA). Nodes run this
venv's Ray (``python -m ray.scripts.scripts start``) so their workers import this checkout; each is its
own process group, stopped by its pid (never ``ray stop``). Runs go through ``winnow run --address``.
Order matters: the CPU-only tests run before the ``gpu_node`` fixture adds the GPU node.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PROBE = "tests.pipeline.runners.ray_data.gpu_probe:GpuProbe"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}  # Ray refuses --num-gpus 1 with ""
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "",
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _query(address: str, code: str) -> str:
    """Run ``code`` in a fresh driver connected to the test cluster (this process keeps its own Ray)."""
    script = f"import ray, json\nray.init(address={address!r}, logging_level='ERROR')\n{code}\n"
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _alive(address: str) -> list[dict]:
    try:
        return json.loads(_query(address, "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], "
                                          "'res': n['Resources']} for n in ray.nodes() if n['Alive']]))"))
    except (AssertionError, subprocess.TimeoutExpired, ValueError):
        return []


class _Cluster:
    def __init__(self, tmp):
        self.tmp, self.port = tmp, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.short = tempfile.mkdtemp(prefix="wg-", dir="/tmp")  # Ray's socket paths stay under 108 bytes
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> None:
        ports = [a for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                                "--object-manager-port") for a in (flag, str(_free_port()))]
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if name == "head" \
            else ["--address", self.address]
        log = open(self.tmp / f"{name}.log", "wb")
        n_before = len(_alive(self.address)) if self.procs else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *where, *args, "--block",
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", os.path.join(self.short, name),
             *ports], env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while len(_alive(self.address)) <= n_before:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"{name} not up:\n{open(self.tmp / f'{name}.log').read()[-2000:]}")
            time.sleep(1)

    def stop(self) -> None:
        for p in reversed(self.procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever is left of that node (its own process group)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        shutil.rmtree(self.short, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = _Cluster(tmp_path_factory.mktemp("gpu-cluster"))
    try:
        c.start("head", "--num-cpus", "0", "--num-gpus", "0")
        c.start("cpu", "--num-cpus", "2", "--num-gpus", "0")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gpu_node(cluster):
    """The cluster's third node, with one logical GPU: its id, IP and resources."""
    cluster.start("gpu", "--num-cpus", "2", "--num-gpus", "1")
    found = [n for n in _alive(cluster.address) if n["res"].get("GPU")]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_clip import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("clip") / "tiny.pt")


def _run(cluster, sample_dir, tmp_path, stages, name="out", timeout=400):
    out = tmp_path / name
    with open(tmp_path / f"{name}.yaml", "w") as f:
        yaml.safe_dump({"input": str(sample_dir), "output": str(out), "stages": stages}, f)
    proc = subprocess.run([sys.executable, "-m", "winnow.pipeline.cli", "run", str(tmp_path / f"{name}.yaml"),
                           "--runner", "ray", "--address", cluster.address, "--quiet"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    stats = json.load(open(out / "stats.json")) if proc.returncode == 0 else None
    return proc, stats


def _clip(tiny, **extra) -> dict:
    return {"stage": "clip_score", "model": tiny, "cpus": 1.0, **extra}


def test_cpu_cluster_runs_gpus_null_on_cpu_workers(cluster, sample_dir, tmp_path, tiny):
    proc, stats = _run(cluster, sample_dir, tmp_path, [_clip(tiny)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "stage 'clip_score' runs on CPU workers" in proc.stderr
    workers = stats["stages"]["clip_score"]["workers"]
    nodes = {n["id"]: n for n in _alive(cluster.address)}
    assert workers and {w["device"] for w in workers} == {"cpu"}
    for w in workers:  # on the CPU node (the head has no CPUs), under the address the GCS knows it by
        node = nodes[w["node_id"]]
        assert node["res"].get("CPU") and w["node"] == node["ip"]


def test_cpu_cluster_refuses_an_explicit_gpu(cluster, sample_dir, tmp_path, tiny):
    proc, _ = _run(cluster, sample_dir, tmp_path, [_clip(tiny, gpus=1.0)], timeout=150)  # refused, never waits
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and "stage 'clip_score' needs a GPU per worker and the cluster has no GPU node" in err[-1], \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_gpus_null_is_placed_on_the_gpu_node(cluster, gpu_node, sample_dir, tmp_path):
    proc, stats = _run(cluster, sample_dir, tmp_path, [{"stage": PROBE}, {"stage": "basic_filter", "min_words": 4}])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "runs on CPU workers" not in proc.stderr
    probe = next(st for name, st in stats["stages"].items() if name != "basic_filter")["workers"]  # the user stage
    assert probe and all(w["node_id"] == gpu_node["id"] and w["node"] == gpu_node["ip"]
                         and w["device"].startswith("gpu:") for w in probe), probe
    tasks = stats["stages"]["basic_filter"]["workers"]  # a task stage: at least where it ran
    assert tasks and {w["device"] for w in tasks} == {"cpu"}


def test_clip_on_a_gpu_without_cuda_fails_naming_the_node(cluster, gpu_node, sample_dir, tmp_path, tiny):
    """device: auto on a worker given a (logical) GPU must use CUDA; without one it stops, in one line."""
    proc, _ = _run(cluster, sample_dir, tmp_path, [_clip(tiny)])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    where = f"{gpu_node['ip']} (node {gpu_node['id'][:12]})"
    assert f"stage 'clip_score' was given 1 GPU on node {where} but sees no CUDA device" in last, proc.stderr[-3000:]
    assert "sees no CUDA device" in last


def test_autoscaler_gpu_node_type_resolves_gpus_null(cluster):
    """Autoscaler v2 reports its node types to the GCS; a GPU node type makes gpus: null take one GPU."""
    code = (
        "from ray.core.generated import autoscaler_pb2\n"
        "from ray.experimental import internal_kv\n"
        "import ray._raylet as r\n"
        "from winnow.pipeline.runners.ray_data import adapter, session\n"
        "from winnow.stages.filter.clip_score import ClipScore\n"
        "ns, key = r.GCS_AUTOSCALER_STATE_NAMESPACE.encode(), r.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()\n"
        "cfg = autoscaler_pb2.ClusterConfig(node_group_configs=[\n"
        "    autoscaler_pb2.NodeGroupConfig(name='cpu', resources={'CPU': 8}, max_count=4),\n"
        "    autoscaler_pb2.NodeGroupConfig(name='gpu', resources={'CPU': 8, 'GPU': 2}, max_count=3)])\n"
        "internal_kv._internal_kv_put(key, cfg.SerializeToString(), namespace=ns)\n"
        "try:\n"
        "    view = session.autoscaler_view()\n"
        "    cluster = {'CPU': 2.0, **view}\n"
        "    res = adapter.resources(ClipScore(model='open_clip:ViT-B-32/openai'), cluster)\n"
        "finally:\n"
        "    internal_kv._internal_kv_del(key, namespace=ns)\n"
        "print(json.dumps([view, res.gpus, adapter.pool_size(ClipScore(), cluster), session.autoscaler_view()]))"
    )
    view, gpus, pool, after = json.loads(_query(cluster.address, code))
    assert view == {"winnow:autoscaler": 1.0, "winnow:autoscaler_GPU": 6.0}
    assert gpus == 1.0 and pool == 6
    assert after == {}  # a cluster of `ray start` nodes: no autoscaler at all
