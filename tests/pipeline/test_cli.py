"""The `winnow` CLI as a user runs it: real subprocesses, exit codes, one-line errors."""
import io
import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO


def winnow(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "winnow.pipeline.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("winnow: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_stages_lists_parameters_types_defaults_and_help():
    out = winnow("stages", check=True).stdout
    assert "basic_filter" in out
    assert "--set min_words=<int>  default 3" in out
    assert "--set languages=<list>  default [\"en\"]" in out


def test_stage_runs_one_shard_and_writes_outputs(sample_dir, tmp_path):
    shard = sample_dir / "shard-00000.parquet"
    proc = winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / "o", "--set", "min_words=4",
                  check=True)
    assert "basic_filter" in proc.stderr  # progress line with rows/s
    assert "rows/s" in proc.stderr
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    meta = json.loads((tmp_path / "o" / "pipeline.json").read_text())
    assert meta["config"]["stages"][0]["min_words"] == 4
    manifest = pq.read_table(tmp_path / "o" / "manifest")
    assert manifest.num_rows == pq.read_metadata(shard).num_rows == stats["rows_in"]


def test_config_file_and_set_override(sample_dir, tmp_path):
    cfg = tmp_path / "params.yaml"
    cfg.write_text("min_words: 50\nlanguages: [en, fr]\n")
    winnow("stage", "basic_filter", "--input", sample_dir / "shard-00001.parquet", "--output", tmp_path / "o",
           "--config", cfg, "--set", "min_words=2", check=True)
    stage_cfg = json.loads((tmp_path / "o" / "pipeline.json").read_text())["config"]["stages"][0]
    assert stage_cfg["min_words"] == 2 and stage_cfg["languages"] == ["en", "fr"]


@pytest.mark.torture
def test_user_mistakes_are_one_line_errors(sample_dir, tmp_path):
    shard = sample_dir / "shard-00000.parquet"
    assert_one_line_error(winnow("stage", "nope", "--input", shard, "--output", tmp_path / "a"), "unknown stage 'nope'")
    assert_one_line_error(winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / "b",
                                 "--set", "min_wrds=3"), "unknown parameter 'min_wrds'")
    assert_one_line_error(winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / "c",
                                 "--set", "min_words=many"), "'min_words' must be int")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"garbage" * 10)
    assert_one_line_error(winnow("stage", "basic_filter", "--input", corrupt, "--output", tmp_path / "d"),
                          "corrupt.parquet")
    nocap = tmp_path / "nocap.parquet"
    pq.write_table(pa.table({"url": ["http://x/1"]}), nocap)
    assert_one_line_error(winnow("stage", "basic_filter", "--input", nocap, "--output", tmp_path / "e"),
                          "needs column 'caption'")
    assert_one_line_error(winnow("stage", "basic_filter", "--input", tmp_path / "missing", "--output",
                                 tmp_path / "f"), "no such file")


@pytest.mark.torture
@pytest.mark.timeout(60)
def test_out_of_range_parameters_are_one_line_errors(sample_dir, tmp_path):
    shard = sample_dir / "shard-00000.parquet"
    for i, (setting, needles) in enumerate([
        ("min_words=1000000000000000000000000000000", ["'min_words'", "64 bits"]),  # was an OverflowError
        ("max_aspect_ratio=-1", ["'max_aspect_ratio'", "must be >= 0", "got -1"]),
        ("max_chars=-5", ["'max_chars'", "must be >= 0", "got -5"]),
    ]):
        proc = winnow("stage", "basic_filter", "--input", shard, "--output", tmp_path / str(i), "--set", setting)
        assert_one_line_error(proc, "stage 'basic_filter' (basic_filter)", *needles)
        assert not (tmp_path / str(i) / "manifest").exists()
    listing = winnow("stages", check=True).stdout
    assert "--set max_chars=<int>  default 0, >= 0:" in listing
    assert "--set eps=<float>  default 0.05, in (0, 2):" in listing


@pytest.mark.torture
@pytest.mark.timeout(60)
def test_set_of_a_string_parameter_takes_the_text_as_given(sample_dir, tmp_path):
    from winnow.stages.filter.basic import _default_lid_path

    # "lid: models" makes the path a YAML mapping: it used to be refused as "'lid_model' must be str, got dict"
    lid = tmp_path / "lid: models" / "lid.176.ftz"
    lid.parent.mkdir()
    shutil.copyfile(_default_lid_path(), lid)
    out = tmp_path / "o"
    winnow("stage", "basic_filter", "--input", sample_dir / "shard-00000.parquet", "--output", out, "--quiet",
           "--set", f"lid_model={lid}", "--set", "languages=[en, fr]", "--set", "min_words=2", check=True)
    meta = json.loads((out / "pipeline.json").read_text())
    stage_cfg = meta["config"]["stages"][0]
    assert stage_cfg["lid_model"] == str(lid)
    assert stage_cfg["languages"] == ["en", "fr"] and stage_cfg["min_words"] == 2  # other types are still YAML
    assert meta["models"]["basic_filter"]["lid_model"] == str(lid)  # the model really loaded from there


@pytest.mark.torture
@pytest.mark.timeout(60)
def test_bad_flags_are_one_line_errors_and_help_still_works(tmp_path):
    base = ("stage", "basic_filter", "--input", tmp_path / "in", "--output", tmp_path / "o")
    assert_one_line_error(winnow(*base, "--seed", "abc"), "argument --seed: invalid int value: 'abc'",
                          "winnow stage --help")
    assert_one_line_error(winnow(*base, "--bogus"), "unrecognized arguments: --bogus")
    assert_one_line_error(winnow("run", "p.yaml", "--runner", "nope"), "argument --runner: invalid choice: 'nope'")
    assert_one_line_error(winnow(), "required: command")
    helped = winnow("stage", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: winnow stage") and "--seed" in helped.stdout
    assert not (tmp_path / "o").exists()


@pytest.mark.torture
def test_output_not_writable(sample_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory must go")
    assert_one_line_error(winnow("stage", "basic_filter", "--input", sample_dir, "--output", blocker / "out"),
                          "not writable")


@pytest.mark.torture
def test_conservation_across_all_bad_inputs(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(buf, "JPEG")
    good = buf.getvalue()
    rows = {
        "uid": [f"r{i}" for i in range(8)],
        "caption": ["a red square on a plain background", None, "", "x" * 1_000_000, "\udcff bad".encode(
            "utf-8", "replace").decode("utf-8"), "a red square on a plain background",
            "a red square on a plain background", "ok ok ok ok"],
        "image": pa.array([good, good, good, good, good, b"", b"\x00garbage", good[: len(good) // 3]], pa.binary()),
    }
    pq.write_table(pa.table(rows), tmp_path / "bad.parquet")
    winnow("stage", "basic_filter", "--input", tmp_path / "bad.parquet", "--output", tmp_path / "o", check=True)
    manifest = pq.read_table(tmp_path / "o" / "manifest")
    assert sorted(manifest["uid"].to_pylist()) == rows["uid"]  # every row exactly once
    reasons = dict(zip(manifest["uid"].to_pylist(), manifest["reject_reason"].to_pylist()))
    assert reasons["r0"] is None and reasons["r1"] == reasons["r2"] == "caption_empty"
    assert reasons["r5"] == "image_empty" and reasons["r6"] == "image_undecodable"


def test_sample_command_writes_shards_and_ground_truth(tmp_path):
    proc = winnow("sample", "--output", tmp_path / "s", "--rows", 60, "--shards", 3, "--seed", 5, check=True)
    assert "planted:" in proc.stdout
    assert len(list((tmp_path / "s").glob("shard-*.parquet"))) == 3
    assert pq.read_table(tmp_path / "s" / "ground_truth").num_rows == 60


def test_sample_command_plants_watermarks_and_blur_on_request(tmp_path):
    proc = winnow("sample", "--output", tmp_path / "s", "--rows", 200, "--watermark", 0.1, "--blurred", 0.05,
                  check=True)
    assert "watermark=20" in proc.stdout and "blurred=10" in proc.stdout
    problems = pq.read_table(tmp_path / "s" / "ground_truth")["problem"].to_pylist()
    assert problems.count("watermark") == 20 and problems.count("blurred") == 10
    plain = winnow("sample", "--output", tmp_path / "p", "--rows", 50, check=True)
    assert "watermark" not in plain.stdout  # opt-in: not planted, not listed
    assert_one_line_error(winnow("sample", "--output", tmp_path / "x", "--rows", 50, "--watermark", 1.5),
                          "--watermark 1.5", "between 0 and 1")
    assert_one_line_error(winnow("sample", "--output", tmp_path / "y", "--rows", 50, "--watermark", 0.9),
                          "add up to", "watermark=0.9")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
