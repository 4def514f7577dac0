"""The Ray runner against the local runner on real Ray (started by the tests on this machine).

The pipeline mixes a real map stage (basic_filter, an actor pool), a global barrier (keep the top
fraction by caption length) and a group barrier (exact caption duplicates across shards), plus test
stages that sleep or kill their worker once. Manifests are compared row for row, sorted by uid.
"""
from __future__ import annotations

import glob
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from winnow.stages.base import GlobalStage, GroupStage, MapStage, Param
from winnow.stages.columns import set_column

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


# -- stages used only here -------------------------------------------------------------------
class CaptionTop(GlobalStage):
    """Keeps the longest ``fraction`` of live captions: a global threshold from per-block partials."""

    name = "test_caption_top"
    params = (Param("fraction", float, 0.8, "fraction of live rows to keep"),)
    requires = ("caption",)
    batch_size = 64

    def produces(self):
        return {"caption_len": pa.int32()}

    def prepare(self, table):
        return set_column(table, "caption_len", pc.utf8_length(table["caption"]).cast(pa.int32()))

    def partial(self, table):
        return Counter(table["caption_len"].to_pylist())

    def combine(self, parts):
        total: Counter = Counter()
        for p in parts:
            total.update(p)
        return total

    def finalize(self, counts):
        lengths = sorted(counts.elements(), reverse=True)
        keep = math.ceil(self.fraction * len(lengths))
        return {"min_len": lengths[keep - 1] if keep else 0, "rows": len(lengths)}

    def apply(self, table, artifact):
        lens = table["caption_len"].to_pylist()
        return self.reject(table, [None if n >= artifact["min_len"] else "below_top_fraction" for n in lens])


class CaptionDup(GroupStage):
    """Exact caption duplicates across all shards: the smallest uid of each caption is kept."""

    name = "test_caption_dup"
    key_column = "caption_key"
    batch_size = 64

    def produces(self):
        return {"caption_key": pa.string(), "dup_of": pa.string()}

    def prepare(self, table):
        return set_column(table, "caption_key", pc.utf8_lower(pc.utf8_trim_whitespace(table["caption"])))

    def decide_columns(self):  # only uid + key + decisions travel through the shuffle, not image bytes
        return ["uid"]

    def decide_group(self, group):
        first = group["uid"][0].as_py()  # groups come sorted by key, then uid
        dup = [None] + [first] * (group.num_rows - 1)
        group = set_column(group, "dup_of", pa.array(dup, pa.string()))
        return self.reject(group, [None] + ["duplicate_caption"] * (group.num_rows - 1))


class Slow(MapStage):
    """Sleeps per batch, so a run lasts long enough to be killed half-way."""

    name = "test_slow"
    params = (Param("delay", float, 0.0, "seconds per batch"),)
    batch_size = 20

    def process_batch(self, table):
        time.sleep(self.delay)
        return table


class CrashOnce(MapStage):
    """Kills its worker process on its first batch unless ``marker`` exists (creating it first)."""

    name = "test_crash_once"
    params = (Param("marker", str, "", "file whose absence means: crash now"),)

    def process_batch(self, table):
        if self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(3)
        return table


class CrashOnceInActor(CrashOnce):
    name = "test_crash_once_actor"
    stateful = True  # runs in an actor pool: the actor dies and is restarted


TEST_STAGES = [CaptionTop, CaptionDup, Slow, CrashOnce, CrashOnceInActor]


def register() -> None:
    """Make the test stages known to pipeline files (also called by the killed driver's subprocess)."""
    from winnow import stages

    for cls in TEST_STAGES:
        stages.registry()[cls.name] = cls


@pytest.fixture(scope="module", autouse=True)
def _registered():
    from winnow import stages

    register()
    yield
    for cls in TEST_STAGES:
        stages.registry().pop(cls.name, None)


def pipeline(sample_dir, out, delay=0.0, marker="", marker_actor="") -> dict:
    return {"input": str(sample_dir), "output": str(out), "stages": [
        {"stage": "basic_filter"},
        {"stage": "test_slow", "delay": delay},
        {"stage": "test_crash_once", "marker": marker},
        {"stage": "test_crash_once_actor", "marker": marker_actor},
        {"stage": "test_caption_top", "fraction": 0.8},
        {"stage": "test_caption_dup"},
    ]}


def run(data: dict, runner: str) -> dict:
    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.run import execute

    cfg = parse_pipeline(data)
    return execute(cfg, data["output"], runner=runner, progress=False)


def manifest(out) -> pa.Table:
    parts = sorted(glob.glob(os.path.join(str(out), "manifest", "*.parquet")))
    assert parts, f"no manifest in {out}"
    return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("uid")


def counts(stats: dict) -> dict:
    return {k: (v["rows_in"], v["kept"], v["rejected"]) for k, v in stats["stages"].items()}


@pytest.fixture(scope="module")
def reference(sample_dir, tmp_path_factory):
    """The uninterrupted local run every Ray run must equal."""
    out = tmp_path_factory.mktemp("local")
    stats = run(pipeline(sample_dir, out), "local")
    return {"manifest": manifest(out), "stats": stats, "out": out}


@pytest.fixture(scope="module")
def ray_run(ray_local, sample_dir, tmp_path_factory):
    """One Ray run of the same pipeline in which a task worker and an actor each die once mid-stage."""
    tmp = tmp_path_factory.mktemp("ray")
    markers = tmp / "task-died", tmp / "actor-died"
    out = tmp / "out"
    stats = run(pipeline(sample_dir, out, marker=str(markers[0]), marker_actor=str(markers[1])), "ray")
    return {"manifest": manifest(out), "stats": stats, "out": out, "markers": markers}


def test_ray_equals_local_with_barriers(ray_run, reference):
    got, want, out = ray_run["manifest"], reference["manifest"], ray_run["out"]
    assert got.num_rows == 400
    assert got.schema == want.schema
    assert got.equals(want), "Ray manifest differs from the local runner's"
    assert counts(ray_run["stats"]) == counts(reference["stats"])
    # the barriers did decide something, across shards
    rejected = Counter(got["reject_reason"].to_pylist())
    assert rejected["below_top_fraction"] > 0 and rejected["duplicate_caption"] > 0
    artifact = os.path.join("artifacts", "test_caption_top.json")
    assert open(out / artifact).read() == open(reference["out"] / artifact).read()
    # one final part per input shard, holding the same rows as the local run's
    names = sorted(os.listdir(out / "manifest"))
    assert names == sorted(os.listdir(reference["out"] / "manifest")) and len(names) == 4
    for name in names:
        mine = pq.read_table(out / "manifest" / name)
        theirs = pq.read_table(reference["out"] / "manifest" / name)
        assert mine.equals(theirs)
    assert not glob.glob(os.path.join(out, "work", "*", "blocks*"))  # temporary pieces cleaned up


@pytest.mark.torture
def test_worker_killed_mid_stage_is_retried(ray_run, reference):
    """The run above survived a task worker and an actor each calling os._exit on their first batch."""
    task_marker, actor_marker = ray_run["markers"]
    assert task_marker.exists() and actor_marker.exists(), "the test stages never killed their worker"
    assert ray_run["manifest"].equals(reference["manifest"])


def test_rerun_of_finished_run_skips_work(ray_local, sample_dir, reference, tmp_path):
    """Every checkpoint exists: a rerun of the same pipeline does no stage work and rewrites the same manifest.
    (The kill markers of ``ray_run`` are files its stages name, created during that run: a rerun of it would
    rightly see changed inputs, so this run has none.)"""
    out = tmp_path / "out"
    run(pipeline(sample_dir, out), "ray")
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "work", "*", "part-*"))}
    stats = run(pipeline(sample_dir, out), "ray")
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "work", "*", "part-*"))}
    assert before == after and stats["resumed"] == "resumed 4/4 shards"
    assert manifest(out).equals(reference["manifest"])


def _driver(data: dict, yaml_path, log_path) -> subprocess.Popen:
    with open(yaml_path, "w") as f:
        yaml.safe_dump(data, f)
    code = ("import sys; from tests.pipeline.runners.ray_data.test_runner import register; register(); "
            "from winnow.pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-c", code, "run", str(yaml_path), "--runner", "ray"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Whatever is left of a driver's process group (its own session) after it ended."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.torture
def test_driver_killed_then_rerun_resumes(sample_dir, tmp_path, reference):
    """`winnow run` (embedded Ray, no --address) SIGKILLed after its first checkpoint, then rerun."""
    out = tmp_path / "out"
    data = pipeline(sample_dir, out, delay=0.1)
    log = tmp_path / "driver.log"
    proc = _driver(data, tmp_path / "p.yaml", log)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(out, "work", "seg-0", "part-*.parquet")):
            assert proc.poll() is None, f"driver ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's processes share its fate
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    assert not (out / "stats.json").exists(), "the run finished before it was killed"
    done_before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "work", "seg-0", "part-*.parquet"))}
    assert 0 < len(done_before) < 4
    proc = _driver(data, tmp_path / "p.yaml", log)
    try:
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        _kill_group(proc)
    assert manifest(out).equals(reference["manifest"])
    kept = pq.read_table(out / "kept").sort_by("uid")  # bytes from the input: checkpoints hold none
    assert kept.num_rows and kept.equals(pq.read_table(reference["out"] / "kept").sort_by("uid"))
    assert {p: os.path.getmtime(p) for p in done_before} == done_before  # checkpoints kept, not redone
    assert "basic_filter" in log.read_text()  # per-stage progress lines on stderr


@pytest.mark.parametrize("stage_spec", [{"stage": "basic_filter"},  # an actor pool (fastText in setup)
                                        {"stage": f"{__name__}:CaptionTop"}])  # a task (prepare step)
def test_shard_reads_fuse_into_the_first_cpu_stage(ray_local, sample_dir, tmp_path, stage_spec):
    """Rows must not cross the object store between reading a shard and its first stage: Ray Data fuses the
    two operators only when their resources and pool sizes agree, which ``ray_adapter.read_args`` arranges."""
    from winnow.pipeline.config import parse_pipeline
    from winnow.pipeline.inputs import list_shards
    from winnow.pipeline.plan import make_plan
    from winnow.pipeline.runners.ray_data import adapter as ray_adapter
    from winnow.pipeline.runners.ray_data import session as ray_session
    from winnow.pipeline.runners.ray_data.adapter import read_dataset

    ray_session.connect(None)
    cfg = parse_pipeline({"input": str(sample_dir), "stages": [stage_spec]})
    stages, shards = cfg.build_stages(), list_shards(cfg.input)
    step = make_plan(stages)[0].steps[0]
    cluster = ray_session.cluster_resources()
    ds = read_dataset(shards, ("input", cfg.columns, stages[0]), cluster, step.stage)
    ds = ray_adapter.map_step(ds, step, 0, cluster).materialize()
    assert ds.count() == 400
    assert "MapBatches(_read_batch)->MapBatches(" in ds.stats()
