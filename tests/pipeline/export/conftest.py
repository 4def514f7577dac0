"""Real runs to export: basic_filter on the session's 400-row sample pool, through the local runner."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import parse_pipeline
from winnow.pipeline.run import execute


def run_pipeline(input_path, out, write_kept=True, **extra) -> dict:
    cfg = parse_pipeline({"input": str(input_path), "output": str(out), "write_kept": write_kept,
                          "stages": [{"stage": "basic_filter"}], **extra})
    return execute(cfg, str(out), runner="local", progress=False)


@pytest.fixture(scope="session")
def kept_run(sample_dir, tmp_path_factory):
    """A finished run with OUT/kept/ (uids like 's7-0000001': not DataComp's 128-bit hex)."""
    out = tmp_path_factory.mktemp("export-run") / "run"
    run_pipeline(sample_dir, out)
    return out


@pytest.fixture(scope="session")
def hex_run(sample_dir, tmp_path_factory):
    """The same pool with DataComp-style uids (32 hex characters), run without a kept set."""
    pool = tmp_path_factory.mktemp("hex-pool")
    for shard in sorted(sample_dir.glob("shard-*.parquet")):
        table = pq.read_table(shard)
        uids = [hashlib.md5(u.encode()).hexdigest() for u in table["uid"].to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids)),
                       pool / shard.name)
    out = tmp_path_factory.mktemp("hex-run") / "run"
    run_pipeline(pool, out, write_kept=False)
    return out


def kept_rows(run) -> dict:
    """uid -> kept row (with image bytes), read straight from OUT/kept/."""
    table = pq.read_table(run / "kept")
    return {row["uid"]: row for row in table.to_pylist()}
