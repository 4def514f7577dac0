"""`exports:` in a pipeline and `winnow export` as a user runs them: real subprocesses, one-line errors."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.pipeline.test_cli import assert_one_line_error, winnow
from winnow.pipeline.cli import main


def test_pipeline_exports_run_after_the_outputs_under_the_run_dir(sample_dir, tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"input": str(sample_dir), "output": str(out),
                                    "stages": [{"stage": "basic_filter"}],
                                    "exports": [{"format": "webdataset", "output": "exports/wds",
                                                 "samples_per_shard": 100},
                                                {"format": "parquet"}]}))
    proc = winnow("run", path, "--runner", "local", "--quiet", check=True)
    kept = json.loads((out / "stats.json").read_text())["rows_kept"]
    assert sum(json.loads((out / "exports" / "wds" / "sizes.json").read_text()).values()) == kept
    assert (out / "exports" / "parquet" / "README.md").exists()
    assert f"export webdataset: {kept} samples" in proc.stderr
    recorded = json.loads((out / "pipeline.json").read_text())["config"]["exports"]
    assert recorded[0] == {"format": "webdataset", "output": "exports/wds", "samples_per_shard": 100,
                           "shuffle": False, "seed": None}


@pytest.mark.torture
@pytest.mark.parametrize("exports, needles", [
    ([{"format": "tfrecord"}], ["exports[0]: unknown format 'tfrecord'", "webdataset"]),
    ([{"format": "webdataset", "shard_size": 10}], ["exports[0]: unknown key 'shard_size'", "samples_per_shard"]),
    ([{"format": "datacomp-subset", "shuffle": True}], ["exports[0]: unknown key 'shuffle' for format datacomp"]),
    ([{"format": "parquet", "samples_per_shard": 0}], ["'samples_per_shard' must be at least 1"]),
    ([{"format": "webdataset", "samples_per_shard": "many"}], ["'samples_per_shard' must be int, got str"]),
    ("webdataset", ["'exports' must be a list"]),
])
def test_bad_exports_fail_before_anything_runs(capsys, sample_dir, tmp_path, exports, needles):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"input": str(sample_dir), "output": str(tmp_path / "out"),
                                    "stages": [{"stage": "basic_filter"}], "exports": exports}))
    assert main(["run", str(path), "--runner", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"winnow: error: {path}: ")
    assert all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


@pytest.mark.torture
def test_an_export_needing_bytes_in_a_run_without_kept_is_refused_up_front(capsys, sample_dir, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"input": str(sample_dir), "output": str(tmp_path / "out"), "write_kept": False,
                                    "stages": [{"stage": "basic_filter"}], "exports": [{"format": "webdataset"}]}))
    assert main(["run", str(path), "--runner", "local"]) == 2
    assert "exports[0] (webdataset) needs the kept set" in capsys.readouterr().err


def test_cli_export_writes_and_says_where(kept_run):
    proc = winnow("export", kept_run, "--format", "webdataset", "--output", "exports/cli", "--samples-per-shard",
                  "1000", "--shuffle", "--seed", "5", check=True)
    kept = json.loads((kept_run / "stats.json").read_text())["rows_kept"]
    assert proc.stdout.strip() == f"export webdataset: {kept} samples, shards 1 -> {kept_run}/exports/cli"


@pytest.mark.torture
def test_cli_bad_input_is_one_line(kept_run, hex_run, tmp_path):
    assert_one_line_error(winnow("export", hex_run, "--format", "webdataset"), "no kept set (kept/)", "write_kept")
    assert_one_line_error(winnow("export", hex_run, "--format", "parquet"), "no kept set (kept/)")
    assert_one_line_error(winnow("export", kept_run, "--format", "wds"), "unknown format 'wds'", "webdataset")
    assert_one_line_error(winnow("export", tmp_path / "nowhere", "--format", "webdataset"), "nowhere: not found")
    assert_one_line_error(winnow("export", tmp_path, "--format", "parquet"), "not a finished winnow run")
    assert_one_line_error(winnow("export", kept_run, "--format", "datacomp-subset"), "not 128-bit hex", "s7-")
    assert_one_line_error(winnow("export", kept_run, "--format", "webdataset", "--samples-per-shard", "-3"),
                          "'samples_per_shard' must be at least 1")


@pytest.mark.torture
def test_a_rerun_without_kept_leaves_nothing_to_export_silently(sample_dir, tmp_path):
    shard = sample_dir / "shard-00000.parquet"
    winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / "o", "--kept", check=True)
    winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / "o", check=True)  # kept/ emptied
    assert_one_line_error(winnow("export", tmp_path / "o", "--format", "webdataset"), "no kept set")
