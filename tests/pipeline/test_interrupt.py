"""Ctrl-C in the middle of a run: `winnow run` stops promptly, leaves no process behind, exits 130 with one
line, and the same command resumes to the manifest an uninterrupted run writes.

The run is started the way a script's ``winnow run ... &`` starts it: SIGINT inherited as ignored (a shell
without job control does that to background commands). That run used to ignore the signal and exit 0.
SIGINT goes to the run's whole process group, as a terminal's Ctrl-C does, while clip_score scores.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from tests.tiny_clip import tiny_checkpoint
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.inputs import list_shards
from winnow.pipeline.run import execute
from winnow.pipeline.tools.sample import write_sample

pytestmark = pytest.mark.torture
MESSAGE = "winnow: interrupted; rerun the same command to resume"
CLIP_SEG = 2  # seg-0: basic_filter + dedup_image, seg-1: dedup_phash, seg-2: clip_score scoring


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three shards, the five-stage pipeline and an uninterrupted local run's manifest (the reference)."""
    root = tmp_path_factory.mktemp("interrupt")
    write_sample(str(root / "pool"), rows=900, shards=3, seed=3)
    (root / "meta.json").write_text(json.dumps(["star", "circle", "cross", "square", "red", "blue", "photo"]))
    data = {"input": str(root / "pool"), "stages": [
        {"stage": "basic_filter"}, {"stage": "dedup_image"}, {"stage": "dedup_phash"},
        {"stage": "clip_score", "model": tiny_checkpoint(root / "tiny.pt"), "cpus": 1, "device": "cpu"},
        {"stage": "metaclip", "metadata": str(root / "meta.json"), "t": 20}]}
    (root / "p.yaml").write_text(yaml.safe_dump(data))
    execute(parse_pipeline(data | {"output": str(root / "ref")}), str(root / "ref"), runner="local", progress=False)
    return root, pq.read_table(root / "ref" / "manifest").sort_by("uid")


def _start(root, out, runner, log):
    """``winnow run`` as a script's ``winnow run ... &`` starts it: SIGINT ignored, inherited over exec."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(log, "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "winnow.pipeline.cli", "run", str(root / "p.yaml"),
                                     "--output", str(out), "--runner", runner], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _session(sid: int) -> list[str]:
    """Processes still in the run's session (Ray's workers take their own group, not their own session)."""
    left = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # a zombie is gone, only not yet reaped
            left.append(stat.split("/")[2])
    return left


def _kill_session(proc):
    for pid in _session(proc.pid):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _interrupt_while_scoring(root, out, runner, scoring, log):
    """Start the run and SIGINT its process group once ``scoring()`` says clip_score is at work."""
    proc = _start(root, out, runner, log)
    try:
        deadline = time.monotonic() + 240
        while not scoring():
            assert proc.poll() is None, f"run ended before clip_score scored:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "clip_score never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        end = time.monotonic() + 15  # Ray's raylet reaps its workers a moment after the driver is gone
        while _session(proc.pid) and time.monotonic() < end:
            time.sleep(0.2)
        left = _session(proc.pid)
    finally:
        _kill_session(proc)
    assert rc == 130, f"exit {rc} (None: still running 20 s after SIGINT):\n{log.read_text()[-3000:]}"
    assert not left, f"processes of the run still alive: {left}"
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("winnow:")]
    assert lines == [MESSAGE], log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    assert not (out / "artifacts" / "clip_score.json").exists(), "the interrupt landed after clip_score's scoring"
    assert not (out / ".winnow.lock").exists()


def _rerun_matches(root, out, runner, reference, log):
    proc = _start(root, out, runner, log)
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        _kill_session(proc)
    assert pq.read_table(out / "manifest").sort_by("uid").equals(reference)
    # the kept set's bytes come back from the input (checkpoints hold none), after the interruption too
    kept = pq.read_table(out / "kept").sort_by("uid")
    assert kept.num_rows and kept.equals(pq.read_table(root / "ref" / "kept").sort_by("uid"))


@pytest.mark.timeout(240)
def test_ctrl_c_while_clip_scores_local(setup, tmp_path):
    root, reference = setup
    out = tmp_path / "out"
    stems = [s.stem for s in list_shards(str(root / "pool"))]
    first = os.path.join(out, "work", f"seg-{CLIP_SEG}", f"part-{stems[0]}.parquet")  # a shard scored, two to go
    _interrupt_while_scoring(root, out, "local", lambda: os.path.exists(first), tmp_path / "run.log")
    assert not os.path.exists(os.path.join(out, "work", f"seg-{CLIP_SEG}", f"part-{stems[2]}.parquet"))
    _rerun_matches(root, out, "local", reference, tmp_path / "rerun.log")


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_ctrl_c_while_clip_scores_ray(setup, tmp_path):
    root, reference = setup
    out = tmp_path / "out"
    seg = os.path.join(out, "work", f"seg-{CLIP_SEG}")
    # clip_score's actor wrote its first output piece (or part): the model is loaded and scoring
    started = lambda: bool(glob.glob(os.path.join(seg, "blocks", "*")) or glob.glob(os.path.join(seg, "part-*")))  # noqa: E731
    _interrupt_while_scoring(root, out, "ray", started, tmp_path / "run.log")
    _rerun_matches(root, out, "ray", reference, tmp_path / "rerun.log")
