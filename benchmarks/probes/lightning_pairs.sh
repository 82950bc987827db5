#!/usr/bin/env bash
# `fmnist train --recipe quickstart` against lean PyTorch Lightning (benchmarks/quickstart_lightning.py),
# REPS alternating pairs, wall time of each process (issue 22's target: fmnist >= 1.6x faster).
# Lightning is not a dependency: LIGHTNING_PATH is a folder it is installed in, e.g.
#   uv pip install --target /tmp/lpkgs --no-deps lightning lightning_utilities torchmetrics
#   flock /tmp/fmnist-cpu.lock bash benchmarks/probes/lightning_pairs.sh 3
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LP=${LIGHTNING_PATH:-/tmp/lpkgs}
for _ in $(seq "${1:-3}"); do
  d=$(mktemp -d)
  t0=$(date +%s.%N); PYTHONPATH=src "$PY" -m fmnist train --recipe quickstart --out "$d/q" > /dev/null; t1=$(date +%s.%N)
  PYTHONPATH=src:$LP "$PY" benchmarks/quickstart_lightning.py 2>/dev/null | tail -1 > "$d/l.json"; t2=$(date +%s.%N)
  printf "fmnist %6.2f s   lightning %6.2f s   ratio %.2fx   %s\n" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$t2 - $t1" | bc)" "$(echo "($t2 - $t1) / ($t1 - $t0)" | bc -l)" "$(cat "$d/l.json")"
  rm -rf "$d"
done
