#!/usr/bin/env bash
# Issue 22's "slow mode" suspects that live in the OpenMP runtime (libgomp): the plain script
# (benchmarks/quickstart_plain.py) under its default settings and under OMP_WAIT_POLICY=PASSIVE,
# ACTIVE and OMP_PROC_BIND=close OMP_PLACES=cores, beside `fmnist train --recipe quickstart`,
# alternating, REPS rounds. One line per run: wall seconds and each epoch's training seconds.
#   flock /tmp/fmnist-cpu.lock bash benchmarks/probes/floor_omp.sh 3 > omp.log
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=src
PY=${PY:-.venv/bin/python}
one() {  # LABEL CMD... (the command gets a fresh folder as its last argument)
  local label=$1 d t0 t1 epochs
  shift
  d=$(mktemp -d)
  t0=$(date +%s.%N)
  "$@" "$d/run" > "$d/stdout" 2>&1
  t1=$(date +%s.%N)
  if [ -f "$d/run/metrics.jsonl" ]; then
    epochs=$($PY -c "import json, sys; print(' '.join('%.2f' % json.loads(l)['seconds'] for l in open(sys.argv[1])))" "$d/run/metrics.jsonl")
  else
    epochs=$(grep "Training seconds" "$d/stdout" | cut -d: -f2)
  fi
  printf "%-10s wall %6.2f s  epochs %s\n" "$label" "$(echo "$t1 - $t0" | bc)" "$epochs"
  rm -rf "$d"
}
plain() { mkdir -p "${@: -1}"; env "${@:1:$#-1}" "$PY" benchmarks/quickstart_plain.py "${@: -1}"; }
for _ in $(seq "${1:-3}"); do
  one fmnist "$PY" -m fmnist train --recipe quickstart --out
  one plain plain OMP_DEFAULTS=1
  one passive plain OMP_WAIT_POLICY=PASSIVE
  one active plain OMP_WAIT_POLICY=ACTIVE
  one bind plain OMP_PROC_BIND=close OMP_PLACES=cores
done
