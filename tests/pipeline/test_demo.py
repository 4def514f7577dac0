"""`make demo` is the product's smoke test: the same script, end to end on an embedded Ray, at a small size."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO


@pytest.mark.timeout(1500)
def test_demo_runs_end_to_end_and_catches_planted_problems(tmp_path):
    env = dict(os.environ, WINNOW_DEMO_ROWS="300", WINNOW_DEMO_DFN_STEPS="40", WINNOW_DEMO_OUT=str(tmp_path / "demo"))
    proc = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "demo" / "run"
    for name in ("report.html", "stats.json", "pipeline.json"):
        assert (run / name).is_file(), name
    assert any((run / "kept").glob("*.parquet")) and any((run / "manifest").glob("*.parquet"))
    card = {row["problem"]: row for row in json.loads((tmp_path / "demo" / "scorecard.json").read_text())}
    for problem in ("tiny_image", "extreme_aspect", "empty_caption", "non_english", "long_caption"):
        assert card[problem]["recall"] == 1.0 and card[problem]["precision"] == 1.0, card[problem]
    # broken images are rejected somewhere (download or decode), never kept
    for problem in ("corrupt_image", "zero_bytes"):
        assert card[problem]["caught"] + card[problem]["rejected_elsewhere"] == card[problem]["planted"]
    # every exact copy is rejected: as dup:image, or earlier when its source's caption was itself a planted problem
    exact = card["exact_duplicate"]
    assert exact["caught"] + exact["rejected_elsewhere"] == exact["planted"] and exact["precision"] == 1.0
    assert card["near_duplicate"]["recall"] >= 0.8 and card["near_duplicate"]["precision"] == 1.0
    # the DFN trained on the clean set finds most swapped captions (a random filter would find ~25%)
    assert card["mismatched_caption"]["recall"] >= 0.5
    # the watermark judge, trained on the spot on a CLIP trained for only 40 steps here, is still far better
    # than chance: a random rejecter's precision would be the watermark rate among the rows it saw (~10%)
    manifest = pq.read_table(run / "manifest")
    truth = pq.read_table(tmp_path / "demo" / "pool" / "ground_truth")
    watermarked = {u for u, p in zip(truth["uid"].to_pylist(), truth["problem"].to_pylist()) if p == "watermark"}
    scored = {u for u, v in zip(manifest["uid"].to_pylist(), manifest["watermark"].to_pylist()) if v is not None}
    rate = len(watermarked & scored) / len(scored)
    mark = card["watermark"]
    assert mark["planted"] == 24 and mark["flagged"] > 0, mark
    assert mark["precision"] >= 2 * rate and mark["recall"] >= 0.25, (mark, rate)
    reasons = set(manifest["reject_reason"].to_pylist())
    assert "filter:watermark < 0.5" in reasons and "below_keep_top:dfn_score" in reasons
    stats = json.loads((run / "stats.json").read_text())
    assert list(stats["stages"]) == ["download", "basic_filter", "dedup_image", "dedup_phash", "dfn", "quality",
                                     "metaclip", "recaption"]
    assert stats["runner"] == "ray" and stats["rows_in"] == 300
