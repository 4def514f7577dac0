"""The DataComp subset file: DataComp's own dtype and order, and a clear refusal for uids it cannot hold."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.export.main import run_export
from winnow.pipeline.export.spec import parse_export
from winnow.stages.errors import WinnowError

SPEC = parse_export({"format": "datacomp-subset"}, "test")


def test_subset_round_trips_as_datacomp_builds_and_reads_it(hex_run):
    result = run_export(str(hex_run), SPEC)
    path = hex_run / "exports" / "datacomp-subset" / "subset.npy"
    assert result["output"] == str(path)
    manifest = pq.read_table(hex_run / "manifest").to_pylist()
    kept = [r["uid"] for r in manifest if r["reject_stage"] is None]
    assert 0 < len(kept) < len(manifest)
    loaded = np.load(path)
    # exactly what DataComp's baselines.py saves
    expected = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in kept], np.dtype("u8,u8"))
    expected.sort()
    assert loaded.dtype == np.dtype("u8,u8") and loaded.dtype.descr == [("f0", "<u8"), ("f1", "<u8")]
    assert loaded.shape == (len(kept),) and np.array_equal(loaded, expected)
    # and what resharder.py does with it: searchsorted counts each sample's uid
    rejected = [r["uid"] for r in manifest if r["reject_stage"] is not None]
    for uid, count in [(u, 1) for u in kept[:20]] + [(u, 0) for u in rejected[:20]]:
        key = np.array((int(uid[:16], 16), int(uid[16:32], 16)), np.dtype("u8,u8"))
        lo, hi = np.searchsorted(loaded, key, "left"), np.searchsorted(loaded, key, "right")
        assert hi - lo == count, uid
    assert "".join(f"{a:016x}{b:016x}" for a, b in loaded[:1]) == min(kept)  # sorted as 128-bit numbers


@pytest.mark.torture
def test_uids_that_are_not_128_bit_hex_are_refused_naming_one(kept_run):
    with pytest.raises(WinnowError) as err:
        run_export(str(kept_run), SPEC)
    line = str(err.value)
    assert "\n" not in line and "128-bit hex" in line and "uid 's7-" in line
    assert not (kept_run / "exports" / "datacomp-subset" / "subset.npy").exists()
