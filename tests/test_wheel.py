"""A wheel built from the repo, installed non-editable into a fresh venv, is a whole winnow.

The fresh venv sees this environment's third-party packages through a plain path entry (the
dependencies are gigabytes; winnow's own editable hook there is a .pth file, which a path entry does
not run), so the only winnow it can import is the wheel's. Everything runs from a neutral directory.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROBE = """
import importlib.util, sys
for name in ("pipeline", "stages"):
    assert importlib.util.find_spec(name) is None, f"a top-level '{name}' is importable"
spec = importlib.util.find_spec("kernels")
assert spec is None or "winnow" not in (spec.origin or ""), spec
import winnow.stages, winnow.pipeline.cli
assert "site-packages" in winnow.stages.__file__, winnow.stages.__file__
from winnow.stages.models import tiny_vlm
from winnow.stages.models.clip import CONFIG_DIR
assert (CONFIG_DIR / "winnow-tiny.json").is_file()
print("probe ok")
"""

BUILD = """
import sys
import torch
from winnow.pipeline.tools.sample import write_sample
from winnow.stages.models import clip as models
from winnow.stages.models.tiny_vlm import build_tiny_vlm
write_sample("pool", rows=24, shards=1, seed=3)
torch.manual_seed(0)
torch.save({"state_dict": models.load_model("open_clip:winnow-tiny", allow_random=True).model.state_dict()}, "t.pt")
build_tiny_vlm("blip", "vlm")
print("built")
"""


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools leaves build/ behind, and a stale build/ would leak old modules into the wheel
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                               ".pytest_cache", "demo_out", ".whl", ".gpu_data"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = glob.glob(str(root / "dist" / "winnow-*.whl"))[0]
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "third_party.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = root / "work"
    work.mkdir()
    return {"python": python, "winnow": str(env_dir / "bin" / "winnow"), "work": work, "wheel": wheel}


def _run(cmd, cwd, timeout=400):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_wheel_ships_package_data_and_only_the_winnow_namespace(wheel_env):
    import zipfile

    names = zipfile.ZipFile(wheel_env["wheel"]).namelist()
    assert "winnow/stages/models/configs/winnow-tiny.json" in names
    assert "winnow/stages/models/configs/vlm/llava/chat_template.jinja" in names
    assert "winnow/stages/models/configs/classifier/tiny-vit/preprocessor_config.json" in names
    assert {n.split("/")[0] for n in names if not n.startswith("winnow-")} == {"winnow"}
    proc = _run([wheel_env["python"], "-c", PROBE], wheel_env["work"])
    assert proc.returncode == 0 and "probe ok" in proc.stdout, proc.stderr[-2000:]


def test_installed_wheel_runs_stages_clip_score_and_recaption(wheel_env):
    work = wheel_env["work"]
    proc = _run([wheel_env["winnow"], "stages"], work)
    assert proc.returncode == 0 and "clip_score" in proc.stdout and "recaption" in proc.stdout, proc.stderr
    proc = _run([wheel_env["python"], "-c", BUILD], work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run([wheel_env["winnow"], "stage", "clip_score", "--input", "pool", "--output", "scored",
                 "--set", f"model=open_clip:winnow-tiny@{work / 't.pt'}", "--set", "device=cpu"], work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pyarrow.parquet as pq

    scored = pq.read_table(str(work / "scored" / "manifest"))
    assert scored.num_rows == 24 and scored["clip_score"].null_count < 24
    proc = _run([wheel_env["winnow"], "stage", "recaption", "--input", "pool", "--output", "captioned",
                 "--set", f"model={work / 'vlm'}", "--set", "max_new_tokens=4", "--set", "gpus=0"], work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    captioned = pq.read_table(str(work / "captioned" / "manifest"))
    assert captioned.num_rows == 24 and captioned["caption_synthetic"].null_count < 24
