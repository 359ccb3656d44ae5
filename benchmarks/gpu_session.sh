#!/usr/bin/env bash
# Every GPU check of the project in one run on a lent GPU machine (the session's `device`
# tool), and the packing that run needs, done here first.
#
#   benchmarks/gpu_session.sh pack   # here: wheels + a UC Merced sample into .device/ (ignored)
#   benchmarks/gpu_session.sh run    # there: device run, command "benchmarks/gpu_session.sh run",
#                                    #   carry [".device"], timeout_s 600; figures under $OUT
#
# The GPU machine has torch, torchvision, pyarrow, pillow, click and fsspec, but no faiss or
# rasterio, no ../shared and no Inception weights, and at most 64 MiB travel. So `pack` brings
# faiss-cpu (the project's FAISS calls are CPU indexes; faiss-gpu's wheel is too large) and
# rasterio as Python 3.12 wheels, and 3 scenes of each UC Merced class plus 6 of the original
# TIFFs; `run` uses the `random` backbone (TF's graph, seeded random weights: the same speed
# and arithmetic). `run` on a machine without CUDA does the same checks at toy sizes, which
# is how this script is tested before a device session.
#
# `run` writes, under $OUT (default .device/out): env.txt (GPU, versions), tests.txt
# (tests/test_gpu_path.py, the GPU-only tests included), agreement.txt
# (benchmarks/precision_agreement.py on the device: codes and nvJPEG pixels against the
# CPU's), gpu-build.txt (benchmarks/gpu_build.py: pipeline limit, builds, query).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=.device
PYVENV=${PYVENV:-.venv/bin/python}

pack() {
  set -e
  local version
  version() { "$PYVENV" -m pip show "$1" | sed -n 's/^Version: //p'; }
  rm -rf "$KIT/wheels" "$KIT/datasets"
  mkdir -p "$KIT/wheels" "$KIT/datasets/ucmerced" "$KIT/datasets/ucmerced-tif-sample"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$KIT/wheels" \
    "faiss-cpu==$(version faiss-gpu)" "rasterio==$(version rasterio)" \
    "affine==$(version affine)"
  local data=../shared/datasets
  for class in "$data"/ucmerced/*/; do
    mkdir -p "$KIT/datasets/ucmerced/$(basename "$class")"
    ls "$class" | sort | head -3 | while read -r f; do
      cp "$class/$f" "$KIT/datasets/ucmerced/$(basename "$class")/"
    done
  done
  for tif in $(cd "$data/ucmerced-tif-sample" && ls -d */*.tif | sort | head -6); do
    mkdir -p "$KIT/datasets/ucmerced-tif-sample/$(dirname "$tif")"
    cp "$data/ucmerced-tif-sample/$tif" "$KIT/datasets/ucmerced-tif-sample/$tif"
  done
  local kit tree
  kit=$(du -sb "$KIT" | cut -f1)
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
  echo "packed $KIT: $((kit / 1048576)) MiB, the tracked tree $((tree / 1048576)) MiB" \
       "(at most 64 MiB travel)"
  if (( kit + tree > 62 * 1048576 )); then echo "too large to travel" >&2; exit 1; fi
}

run() {
  local out=${OUT:-$KIT/out}
  mkdir -p "$out"
  if ! python3 -c 'import faiss, rasterio' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/dahash-site "$KIT"/wheels/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/dahash-site:$PWD PYTHONUNBUFFERED=1 \
    DAHASH_INDEX_DATASETS=$PWD/$KIT/datasets DAHASH_INDEX_HOME=/tmp/dahash-home
  local sizes device
  if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    device=cuda
    sizes=()
  else  # toy sizes: the script's own test on a machine without CUDA
    device=cpu
    sizes=(--scenes 32 --shards 2 --tiff-scenes 8 --tiff-shards 2 --query-files 8
           --batch-size 16)
  fi
  { date -u; nvidia-smi 2>&1 | head -15; df -h /dev/shm /tmp; nproc
    python3 -c 'import torch, torchvision, faiss, rasterio, pyarrow
print("torch", torch.__version__, "torchvision", torchvision.__version__, "faiss",
      faiss.__version__, "rasterio", rasterio.__version__, "pyarrow", pyarrow.__version__)'
  } 2>&1 | tee "$out/env.txt"
  timeout 200 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_path.py 2>&1 \
    | tail -40 | tee "$out/tests.txt"
  timeout 120 python3 benchmarks/precision_agreement.py --random-weights --device "$device" \
    --data "$KIT/datasets/ucmerced" --every 1 --bf16-every 1 --precisions fp32,tf32,bf16 \
    --nvjpeg 2>&1 | tee "$out/agreement.txt"
  timeout 300 python3 benchmarks/gpu_build.py --random-weights --data "$KIT/datasets/ucmerced" \
    --device "$device" --work /tmp "${sizes[@]}" 2>&1 | tee "$out/gpu-build.txt"
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
