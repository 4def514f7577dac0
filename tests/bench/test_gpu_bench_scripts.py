"""The GPU benchmarks are the only way the GPU figures get measured, and most sessions have no GPU:
run each script's CPU mode here so a change to the engine or the recaption stage cannot rot them
unnoticed (a broken script would cost a GPU session its device time)."""
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_module(module: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_clip_score_gpu_dry_run_scores_with_both_loops(coco_dir):
    out = run_module("bench.clip_score_gpu", "--dry-run")
    m = re.search(r"winnow engine\s+(\d+) images/s \| plain open_clip DataLoader loop\s+(\d+) images/s", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, out


@pytest.mark.slow
def test_recaption_gpu_smoke_captions_batched_and_one_by_one():
    out = run_module("bench.recaption_gpu", "--smoke")
    rates = [float(x) for x in re.findall(r":\s+([\d.]+) captions/s", out)]
    assert len(rates) == 2 and min(rates) > 0, out
