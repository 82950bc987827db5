#!/usr/bin/env bash
# Issue 22's CPU figures on other CPU classes: a lent GPU machine's own processor, the GPU hidden,
# two of its cores (taskset) and two OpenMP threads, as on a 2-core VM. One device call:
#   mkdir -p .gpucheck-data && cp /usr/share/datasets/fashion-mnist/*.gz .gpucheck-data/
#   (device, carry .gpucheck-data) bash benchmarks/probes/cpu_class_device.sh
# On an Intel Xeon with AMX: the seed case natively (class amx), then capped to AVX-512 kernels
# (class avx512, bf16 still on: AVX512-BF16) a 60 s time budget and the seed case.
# Writes $OUT/log.txt, $OUT/seed-native.json, $OUT/seed-avx512.json, the budget run's files.
set -uo pipefail
OUT=${OUT:-/tmp/cpu-class}
mkdir -p "$OUT"
# absolute: the benchmarks start children in temporary folders
export PYTHONPATH=$PWD/src FMNIST_DATA_DIR=$PWD/.gpucheck-data FMNIST_CACHE_DIR=/tmp/fc
export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
PIN=(taskset -c "${CORES:-2,3}")
CAP=(env ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ATEN_CPU_CAPABILITY=avx512)
TIMEFORMAT="wall %R s"
{
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket"
python3 -c "import torch; from fmnist import hardware as h; print('torch', torch.__version__, torch.backends.cpu.get_cpu_capability(), '| class', h.cpu_class(), '| bf16 auto:', h.use_bf16('auto', torch.device('cpu')))"
"${CAP[@]}" python3 -c "import torch; from fmnist import hardware as h; print('capped: torch', torch.backends.cpu.get_cpu_capability(), '| class', h.cpu_class(), '| bf16 auto:', h.use_bf16('auto', torch.device('cpu')))"
echo "pinned to: ${PIN[*]}"
python3 -m fmnist data fetch >/dev/null 2>&1 || true  # the decoded-array cache, outside the timings
echo "== seed case, native, ${REPS:-2} alternating repetitions"
time "${PIN[@]}" python3 -m benchmarks --only seed --reps "${REPS:-2}" --out "$OUT/seed-native.json"
echo "== capped to AVX-512: --time-budget 60s (the default recipe)"
time "${PIN[@]}" "${CAP[@]}" python3 -m fmnist train --time-budget 60s --no-tensorboard --out /tmp/b60 | grep -v "it/s"
cp /tmp/b60/metrics.jsonl "$OUT/budget60-avx512-metrics.jsonl" 2>/dev/null
echo "== capped to AVX-512: seed case, 1 repetition"
time "${PIN[@]}" "${CAP[@]}" python3 -m benchmarks --only seed --reps 1 --out "$OUT/seed-avx512.json"
} 2>&1 | tee "$OUT/log.txt"
