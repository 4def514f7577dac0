"""One run per output directory (pipeline/runlock.py): a second run refuses in one line naming the holder, a
dead holder's lock is taken over with a warning (by one newcomer only), another host's never, and the lock
goes when the run ends however it ends (Ctrl-C: tests/pipeline/test_interrupt.py)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from winnow.pipeline import runlock
from winnow.pipeline.cli import main
from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute

pytestmark = [pytest.mark.torture, pytest.mark.timeout(180)]
LOCK = ".winnow.lock"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out, **holder):
    os.makedirs(out, exist_ok=True)
    (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "started": "2026-01-01T00:00:00Z"} | holder))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("winnow: error: "), err
    return lines[0]


def test_second_run_into_the_same_output_refuses_and_the_first_completes(sample_dir, tmp_path):
    data = {"input": str(sample_dir), "stages": [{"stage": "basic_filter"}, {"stage": "dedup_phash"}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "winnow.pipeline.cli", "run", str(tmp_path / "p.yaml"), "--output", str(out),
           "--runner", "local", "--quiet"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "work").exists():  # made after the lock is taken
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.01)
        assert (out / LOCK).exists()
        os.killpg(first.pid, signal.SIGSTOP)  # holds the lock for sure while the second one starts
        try:
            second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        line = _one_line(second.stderr)
        assert f"is in use by pid {first.pid} on host {socket.gethostname()} since " in line, line
        assert "wait for it or pick another --output" in line
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (out / LOCK).exists()
    execute(parse_pipeline(data), str(tmp_path / "ref"), runner="local", progress=False)
    assert pq.read_table(out / "manifest").sort_by("uid").equals(pq.read_table(tmp_path / "ref" / "manifest")
                                                                  .sort_by("uid"))


def test_stale_lock_of_a_dead_or_reused_pid_is_taken_over_with_a_warning(sample_dir, tmp_path, capsys):
    shard = str(sample_dir / "shard-00000.parquet")
    out = tmp_path / "out"
    pid = _dead_pid()
    _write_lock(out, pid=pid)
    assert main(["stage", "basic_filter", "--input", shard, "--output", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"winnow: warning: output {out}: took over the lock of pid {pid} on host {socket.gethostname()}" in err
    assert not (out / LOCK).exists() and (out / "manifest").is_dir()
    # a live pid whose process started at another time is a reused pid: stale too
    _write_lock(out, pid=os.getpid(), proc_start=1)
    runlock.release(runlock.acquire(str(out)))
    assert f"took over the lock of pid {os.getpid()}" in capsys.readouterr().err


def test_lock_of_another_host_is_never_taken_over(sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    _write_lock(out, pid=_dead_pid(), host="elsewhere.invalid")
    before = (out / LOCK).read_text()
    assert main(["stage", "basic_filter", "--input", str(sample_dir), "--output", str(out), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "on host elsewhere.invalid" in line and "another host is never taken over" in line, line
    assert (out / LOCK).read_text() == before and not (out / "work").exists()


def test_lock_is_removed_after_a_run_and_after_a_failing_run(sample_dir, tmp_path, capsys):
    assert main(["stage", "basic_filter", "--input", str(sample_dir / "shard-00000.parquet"), "--output",
                 str(tmp_path / "ok"), "--quiet"]) == 0
    assert not (tmp_path / "ok" / LOCK).exists()
    capsys.readouterr()  # the good run's summary lines
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"url": "http://h/1", "caption": "a photo of a dog"}\n')
    # a broken Parquet footer would be caught before the run, and only the first text shard is read then:
    # this one fails mid-run, after a.jsonl is done
    (bad / "b.jsonl").write_text("not json\n")
    assert main(["stage", "basic_filter", "--input", str(bad), "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "b.jsonl" in _one_line(capsys.readouterr().err)
    assert (tmp_path / "bad" / "work").is_dir() and not (tmp_path / "bad" / LOCK).exists()


RACER = """
import sys, time
from winnow.pipeline import runlock
from winnow.stages.errors import WinnowError
out, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    lock = runlock.acquire(out)
except WinnowError as exc:
    print("lost", exc, flush=True)
else:
    print("won", flush=True)
    time.sleep(3)  # hold while the others try
    runlock.release(lock)
"""


def test_racing_newcomers_on_a_stale_lock_one_wins(tmp_path):
    out = tmp_path / "out"
    _write_lock(out, pid=_dead_pid())
    start = time.time() + 4  # every racer imported and waiting by then
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(start)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(5)]
    results = [(p.pid, *p.communicate(timeout=60)) for p in racers]
    winners = [pid for pid, stdout, _ in results if stdout.startswith("won")]
    assert len(winners) == 1, results
    losers = [stdout for _, stdout, _ in results if stdout.startswith("lost")]
    assert len(losers) == 4 and all(f"in use by pid {winners[0]} " in s for s in losers), results
    assert sum("took over the lock" in err for _, _, err in results) == 1
    assert not (out / LOCK).exists()
