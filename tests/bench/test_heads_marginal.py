"""The heads' marginal-cost figure in docs/heads.md comes from `bench.heads_marginal`: keep it runnable (a tiny
model, a few photos; the numbers themselves are not checked here, only that both configurations ran and the
heads changed no score, which the script asserts)."""
import re

from tests.bench.test_gpu_bench_scripts import run_module


def test_heads_marginal_runs_both_configurations_interleaved(coco_dir):
    out = run_module("bench.heads_marginal", "--model", "open_clip:winnow-tiny", "--images", "8", "--batch", "4",
                     "--rounds", "2", "--threads", "1")
    assert "8 COCO photos" in out and "model open_clip:winnow-tiny-embed768" in out, out
    rounds = re.findall(r"round \d: no heads\s+([\d.]+) img/s, 3 heads\s+([\d.]+) img/s", out)
    assert len(rounds) == 2 and all(float(a) > 0 and float(b) > 0 for a, b in rounds), out
    assert re.search(r"marginal cost: [+-][\d.]+% wall, [+-][\d.]+% CPU time .*; bar <= 5% \(wall\): (met|NOT met)",
                     out), out
