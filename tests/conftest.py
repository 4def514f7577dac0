"""Shared fixtures. Ray is started once per test session (see the ``ray_local`` fixture)."""
from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.s3_fixtures import (  # noqa: E402,F401  (the S3 fixtures)
    closed_endpoint,
    isolate_aws_env,
    s3_auth_store,
    s3_bucket,
    s3_server,
    silent_endpoint,
    slow_down_endpoint,
)

isolate_aws_env()

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (real COCO photos, CC3M captions, MetaCLIP metadata); skip clearly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_dir(shared_data) -> pathlib.Path:
    path = shared_data / "images" / "coco"
    if not any(path.glob("*.jpg")):
        pytest.skip(f"COCO photos not found in {path}")
    return path


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> pathlib.Path:
    """A 400-row, 4-shard `winnow sample` pool with its ground truth (generated once per session)."""
    from winnow.pipeline.tools.sample import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(str(out), rows=400, shards=4, seed=7, mismatch=0.1)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting Ray costs seconds), shut down at the end.

    Four logical CPUs on a 2-core machine: a pipeline with two actor-pool stages plus task stages
    must be able to hold all its operators at once.
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def pytest_terminal_summary(terminalreporter):
    """`make torture` (pytest -m torture) ends with how many attacks were tried and how many held."""
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "call") == "call" and "torture" in getattr(r, "keywords", {})]
    if reports:
        held = sum(r.passed for r in reports)
        terminalreporter.write_line(f"torture: {len(reports)} attacks tried, {held} held, {len(reports) - held} broke")
