#!/usr/bin/env bash
# The CUDA path through the product, in one short run on a lent GPU machine (no network there):
# train the default recipe on cuda (bf16 autocast, fp32 evaluation), evaluate the checkpoint on
# CPU as it would be served, and train to a time budget planned on the GPU.
#   mkdir -p .gpucheck-data && cp /usr/share/datasets/fashion-mnist/*.gz .gpucheck-data/
#   (device) bash benchmarks/gpu_smoke.sh      # writes $OUT/gpu_smoke.log and the runs' JSON
set -uo pipefail
OUT=${OUT:-/tmp/gpu-smoke}
mkdir -p "$OUT"
export PYTHONPATH=src FMNIST_CACHE_DIR=/tmp/fc
D=(--data-dir .gpucheck-data)
TIMEFORMAT="wall %R s"
{
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
echo "== default recipe on cuda"; time python3 -m fmnist train --device cuda --out /tmp/r1 "${D[@]}"
echo "== its checkpoint evaluated and used on cpu"; CUDA_VISIBLE_DEVICES= python3 -m fmnist evaluate /tmp/r1 "${D[@]}"; CUDA_VISIBLE_DEVICES= python3 -m fmnist predict /tmp/r1 --index 0 "${D[@]}"
echo "== --time-budget 20s on cuda"; time python3 -m fmnist train --device cuda --time-budget 20s --out /tmp/r2 "${D[@]}"
echo "== quickstart recipe on cuda"; time python3 -m fmnist train --recipe quickstart --device cuda --out /tmp/r3 "${D[@]}"
} 2>&1 | grep -v "it/s\]" | tee "$OUT/gpu_smoke.log"
for r in r1 r2 r3; do cp /tmp/$r/metrics.jsonl "$OUT/$r-metrics.jsonl" 2>/dev/null; cp /tmp/$r/config.json "$OUT/$r-config.json" 2>/dev/null; done
