#!/usr/bin/env bash
# First the Pallas kernel backend against XLA: the fused kernel checked against its jnp reference
# on the device (not timed when the float32 check fails), then W1 melu-adapt and melu-fo at
# B = 16,384 with each backend (figures and speed-ups). Then BENCH.md's workloads: W1 (every
# variant, B = 32 and 1024, and 16,384), W2 (B = 32 and 1024) and W3 (B = 32, 64, ..., 65,536).
# Every figure is float32 (bench.run's --precision default: GPUs would otherwise run TF32).
# Installs nothing: runs the copied tree with PYTHONPATH=. on the machine's jax. Prints the
# JSON lines, then tables; a run that fails or times out is reported as such and the rest go on.
# Budget: about 4 minutes for the kernel part, 6 for the rest, on an H100.
# KERNEL_ONLY=1: stop after the kernel part. PYTHON: the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
py=${PYTHON:-python3}
out=${OUT:-/tmp}/bench_gpu.jsonl
: > "$out"
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1

# bench LIMIT ARGS...: one bench.run, its JSON lines appended to $out, or a line saying it failed.
bench() {
  local limit=$1
  shift
  if ! timeout "$limit" "$py" -m bench.run "$@" | tee -a "$out"; then
    echo "{\"failed\": true, \"args\": \"$*\"}" | tee -a "$out"
  fi
}

# The kernel on the device (Triton) against the jnp reference, both in full float32: the largest
# relative error over the outputs (float32 must be under 1e-4; bfloat16 is reported).
kernel_ok=1
timeout 180 "$py" - <<'PYTHON' || { echo "kernel check failed (exit $?): the kernel is not timed"; kernel_ok=0; }
import jax, jax.numpy as jnp, numpy as np
from jaxmeta.kernels import fused_adapt, fused_adapt_reference
jax.config.update("jax_default_matmul_precision", "float32")  # the reference too, not TF32
rng = np.random.default_rng(0)
B, S, Q, widths = 1000, 20, 10, (256, 64, 64, 1)
keys = jax.random.split(jax.random.key(0), 3)
layers = [{"w": jax.random.normal(k, (i, o)) * (2 / i) ** 0.5, "b": jnp.zeros(o)}
          for k, i, o in zip(keys, widths, widths[1:])]
sx, qx = (jnp.asarray(rng.normal(size=(B, n, widths[0])) * 0.1, jnp.float32) for n in (S, Q))
sy = jnp.asarray(rng.integers(1, 6, (B, S)), jnp.float32)
sm = jnp.asarray(np.arange(S)[None] < rng.integers(1, S + 1, B)[:, None])
want = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=0.03, steps=5))(sx, sy, sm, qx)
worst = {}
for dtype in (jnp.float32, jnp.bfloat16):
    got = jax.jit(lambda *a: fused_adapt(*a, layers, lr=0.03, steps=5, compute_dtype=dtype))(sx, sy, sm, qx)
    errs = [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in
            zip(jax.tree.leaves((got.layers, got.predictions)), jax.tree.leaves(want[:2]))]
    worst[jnp.dtype(dtype).name] = max(errs)
    print(f"kernel vs reference, {jnp.dtype(dtype).name}: largest relative error {max(errs):.2e}")
assert worst["float32"] < 1e-4, f"float32 relative error {worst['float32']:.2e} is over 1e-4"
PYTHON
kernel=${OUT:-/tmp}/bench_gpu_kernel.jsonl
: > "$kernel"
backends="xla pallas"
[ "$kernel_ok" = 1 ] || backends="xla"
for variant in melu-adapt melu-fo; do
  for backend in $backends; do
    if ! timeout 150 "$py" -m bench.run --workload melu --variant "$variant" --batch 16384 --steps 10 \
        --backend "$backend" | tee -a "$kernel"; then
      echo "{\"variant\": \"$variant\", \"backend\": \"$backend\", \"failed\": true}" | tee -a "$kernel"
    fi
  done
done
grep -v '"failed"' "$kernel" >> "$out"
"$py" - "$kernel" <<'PYTHON'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
by = {(r["variant"], r["backend"]): r for r in rows}
print("| variant | B | XLA users/s | Pallas users/s | Pallas / XLA | XLA ms | Pallas ms |")
print("|---|---|---|---|---|---|---|")
for variant in ("melu-adapt", "melu-fo"):
    x, p = by.get((variant, "xla"), {}), by.get((variant, "pallas"), {})
    ratio = f"{p['tasks_per_s'] / x['tasks_per_s']:.2f}" if "tasks_per_s" in x and "tasks_per_s" in p else "n/a"
    print(f"| {variant} | 16384 | {x.get('tasks_per_s', 'failed')} | {p.get('tasks_per_s', 'not run')} | {ratio} "
          f"| {x.get('step_ms', '')} | {p.get('step_ms', '')} |")
PYTHON
if [ "${KERNEL_ONLY:-0}" = 1 ]; then exit 0; fi

for variant in melu melu-fo melu-adapt; do
  bench 150 --workload melu --variant "$variant" --batch 32 1024 16384 --steps 10
done
bench 150 --workload ragged --batch 32 1024
bench 240 --workload scale --steps 5  # B = 32, 64, ..., 65,536, until one does not fit
"$py" -m bench.table "$out"
