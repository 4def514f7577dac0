#!/usr/bin/env bash
# Every GPU check in one prepared run, for a session that is lent a GPU machine for a few minutes.
#
# That machine is bare: an image with Python 3.12, torch, torchvision, transformers, tokenizers, opencv,
# pyarrow, pytest; no package registry, and ../shared does not travel with the repo. So, in two steps:
#
#   here (pip registry reachable):  bash bench/gpu_session.sh pack
#       -> .whl/ (the wheels the image lacks, for cp312, and winnow's own) and .gpu_data/ (the COCO photos); both git-ignored
#   on the GPU machine (carry .whl and .gpu_data):  bash bench/gpu_session.sh run
#       -> pytest -m gpu, bench.clip_score_gpu, bench.recaption_gpu; logs under $OUT (else ./gpu_out)
#
# Each step has its own time limit so one slow part cannot eat the others' device time (~6 min in all).
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
pack)
  set -e
  mkdir -p .whl .gpu_data/images
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth simplejpeg==1.9.0 ImageHash==4.3.2 PyWavelets
  rm -f .whl/winnow-*.whl  # winnow itself, as the namespace package the tests import (winnow.*)
  python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl .
  rm -rf .gpu_data/images/coco
  cp -r ../shared/data/images/coco .gpu_data/images/coco
  du -sh .whl .gpu_data
  ;;
run)
  out="${OUT:-gpu_out}"
  mkdir -p "$out"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
  fi
  if [ ! -d ../shared/data ] && [ -d .gpu_data ]; then  # where tests and benchmarks look for the real data
    mkdir -p ../shared && ln -sfn "$PWD/.gpu_data" ../shared/data
  fi
  export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
    2>&1 | tee "$out/device.txt"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv 2>&1 | tee -a "$out/device.txt"
  # only the files holding GPU tests: the others import packages the image lacks (ray, faiss, fasttext, ...)
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_image.py tests/kernels/test_phash.py \
    tests/kernels/test_seeded_sampling.py tests/kernels/test_similarity.py tests/stages/filter/test_clip_score.py \
    2>&1 | tee "$out/pytest_gpu.txt"
  timeout 240 python3 -m bench.clip_score_gpu 2>&1 | tee "$out/clip_score_gpu.txt"
  timeout 120 python3 -m bench.recaption_gpu 2>&1 | tee "$out/recaption_gpu.txt"
  ;;
*)
  echo "usage: bash bench/gpu_session.sh pack|run" >&2
  exit 2
  ;;
esac
