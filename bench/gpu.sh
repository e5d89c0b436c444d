#!/usr/bin/env bash
# W1 (every variant, B = 1024 and 16,384) and W3 (B = 32 ... 65,536) on the device machine.
# Installs nothing: runs the copied tree with PYTHONPATH=. on the machine's jax. Prints the
# JSON lines, then a table. Budget: under 6 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
out=${OUT:-/tmp}/bench_gpu.jsonl
: > "$out"
python -c "import jax; print('jax', jax.__version__, jax.devices())"
for variant in melu melu-fo melu-adapt; do
  timeout 120 python -m bench.run --workload melu --variant "$variant" --batch 1024 16384 --steps 10 | tee -a "$out"
done
timeout 150 python -m bench.run --workload scale --batch 32 256 2048 16384 32768 65536 --steps 5 | tee -a "$out"
python -m bench.table "$out"
