"""Bad pipeline files fail before anything runs: one line on stderr naming the file and key, exit 2.

Driven through the real `winnow run` entry point (the default runner is Ray: none of these may get
as far as starting it). One case runs as a subprocess to show the user sees no traceback at all.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from winnow.pipeline.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.torture


def _write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def _run(capsys, path, *extra) -> str:
    rc = main(["run", path, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def good(sample_dir, tmp_path) -> dict:
    return {"input": str(sample_dir), "output": str(tmp_path / "out"),
            "stages": [{"stage": "basic_filter", "min_words": 3}]}


def test_unknown_stage(capsys, tmp_path, good):
    good["stages"].append({"stage": "basic_filtr"})
    path = _write(tmp_path, good)
    line = _run(capsys, path)
    assert line.startswith(f"winnow: error: {path}: unknown stage 'basic_filtr'; available: ")
    assert "basic_filter" in line


def test_unknown_top_level_key(capsys, tmp_path, good):
    good["stagse"] = good.pop("stages")
    path = _write(tmp_path, good)
    assert _run(capsys, path) == f"winnow: error: {path}: unknown key 'stagse'; valid: columns, exports, input, " \
                                 f"output, runner, seed, stages, storage, write_kept"


def test_storage_key_is_checked_and_merged_with_the_cli_flag(capsys, tmp_path, good):
    from winnow.pipeline.config import load_pipeline

    good["storage"] = {"endpoint_url": "http://127.0.0.1:9", "regoin": "x"}
    path = _write(tmp_path, good)
    assert _run(capsys, path) == f"winnow: error: {path}: unknown key 'storage.regoin'; valid: endpoint_url, region"
    good["storage"] = {"endpoint_url": "127.0.0.1:9"}
    path = _write(tmp_path, good)
    assert "storage.endpoint_url must be an http:// or https:// URL" in _run(capsys, path)
    good["storage"] = {"endpoint_url": "http://127.0.0.1:9", "region": "eu-west-1"}
    path = _write(tmp_path, good)
    cfg = load_pipeline(path, {"storage": {"endpoint_url": "http://127.0.0.1:10"}})
    assert cfg.storage == {"endpoint_url": "http://127.0.0.1:10", "region": "eu-west-1"}  # the flag wins
    assert cfg.to_dict()["storage"] == cfg.storage  # recorded in pipeline.json and shipped by submit


def test_unknown_stage_parameter(capsys, tmp_path, good):
    good["stages"][0]["min_wordz"] = 2
    path = _write(tmp_path, good)
    line = _run(capsys, path)
    assert line.startswith(f"winnow: error: {path}: stage 'basic_filter' (basic_filter): unknown parameter "
                           f"'min_wordz'; valid: ")


def test_wrong_parameter_type(capsys, tmp_path, good):
    good["stages"][0]["min_words"] = "three"
    path = _write(tmp_path, good)
    assert _run(capsys, path) == (f"winnow: error: {path}: stage 'basic_filter' (basic_filter): parameter "
                                  f"'min_words' must be int, got str 'three'")


def test_wrong_top_level_type(capsys, tmp_path, good):
    good["seed"] = "seven"
    path = _write(tmp_path, good)
    assert _run(capsys, path) == f"winnow: error: {path}: 'seed' must be int, got str"


def test_missing_input_key(capsys, tmp_path, good):
    del good["input"]
    path = _write(tmp_path, good)
    assert _run(capsys, path) == f"winnow: error: {path}: missing 'input' (a file, directory or glob of shards)"


def test_input_that_does_not_exist(capsys, tmp_path, good):
    good["input"] = str(tmp_path / "nowhere")
    path = _write(tmp_path, good)
    assert _run(capsys, path) == f"winnow: error: input {tmp_path / 'nowhere'}: no such file or directory"
    assert not (tmp_path / "out" / "manifest").exists()


def test_not_yaml(capsys, tmp_path):
    path = _write(tmp_path, "input: [unclosed\nstages:\n  - stage: basic_filter\n")
    assert _run(capsys, path).startswith(f"winnow: error: pipeline file {path} line ")


def test_pipeline_file_missing(capsys, tmp_path):
    path = str(tmp_path / "absent.yaml")
    assert _run(capsys, path) == f"winnow: error: pipeline file {path}: not found"


def test_missing_column_caught_before_ray_starts(capsys, tmp_path):
    """A Parquet input without the column the first stage needs: named from the footer, Ray never starts."""
    import ray

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"url": ["http://example.com/a.jpg"], "description": ["a red circle"]}),
                   tmp_path / "in" / "a.parquet")
    path = _write(tmp_path, {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                             "stages": [{"stage": "basic_filter"}]})
    was_up = ray.is_initialized()
    line = _run(capsys, path, "--runner", "ray")
    assert line.startswith(f"winnow: error: stage 'basic_filter' needs column 'caption' which input "
                           f"{tmp_path / 'in' / 'a.parquet'} does not have (columns: url, description, uid")
    assert ray.is_initialized() == was_up


def test_cli_subprocess_prints_one_line_and_exits_2(tmp_path, good):
    good["stages"][0]["max_aspect_ratio"] = "wide"
    path = _write(tmp_path, good)
    proc = subprocess.run([sys.executable, "-m", "winnow.pipeline.cli", "run", path], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"winnow: error: {path}: stage 'basic_filter' (basic_filter): parameter 'max_aspect_ratio' must be float, "
        f"got str 'wide'"]


@pytest.mark.torture
@pytest.mark.timeout(30)
def test_set_gives_a_string_parameter_its_text_and_parses_the_rest_as_yaml():
    from winnow.pipeline.config import parse_set
    from winnow.stages.caption.recaption import Recaption

    items = ["prompt={caption}", "where=clip_score < 0.25", "revision=a=b: c", "max_new_tokens=3", "top_p=0.5",
             "do_sample=true", "model="]
    got = parse_set(items, Recaption.params)
    assert got == {"prompt": "{caption}", "where": "clip_score < 0.25", "revision": "a=b: c", "max_new_tokens": 3,
                   "top_p": 0.5, "do_sample": True, "model": ""}
    stage = Recaption(**{**got, "model": "m", "prompt": "Describe: the image, alt-text {caption}"})
    assert list(stage.fields) == ["caption"]  # the template's field, not a YAML mapping
    assert parse_set(["prompt=Describe: the image"], Recaption.params)["prompt"] == "Describe: the image"
    assert parse_set(["languages=[en, fr]"], ())["languages"] == ["en", "fr"]
