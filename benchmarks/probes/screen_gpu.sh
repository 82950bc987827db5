#!/usr/bin/env bash
# One lent-GPU call: the default_screen candidates in CANDIDATES x 3 seeds, rows to $OUT.
#   mkdir -p .gpucheck-data && cp /usr/share/datasets/fashion-mnist/*.gz .gpucheck-data/
#   (device) bash benchmarks/probes/screen_gpu.sh benchmarks/probes/screen_round1.json 14
set -uo pipefail
export PYTHONPATH=src FMNIST_DATA_DIR=$PWD/.gpucheck-data FMNIST_CACHE_DIR=/tmp/fc NVIDIA_TF32_OVERRIDE=0
nvidia-smi -L; nproc
python3 -c "import torch; print('torch', torch.__version__)"
python3 -c "from fmnist.recipes import get_recipe; from fmnist.train.data import load_data; print(len(load_data(get_recipe('default')).train_images))"
time python3 benchmarks/probes/default_screen.py screen "$1" --device cuda --parallel "${2:-14}" \
    --seeds 0,1,2 --out "$OUT/$(basename "$1" .json).jsonl"
