#!/usr/bin/env bash
# First the Pallas kernel backend against XLA: the fused kernel checked against its jnp reference
# on the device, then W1 melu-adapt and melu-fo at B = 16,384 with each backend (figures and
# speed-ups). Then W1 (every variant, B = 1024 and 16,384) and W3 (B = 32 ... 65,536).
# Installs nothing: runs the copied tree with PYTHONPATH=. on the machine's jax. Prints the
# JSON lines, then tables. Budget: about 4 minutes for the kernel part, 6 for the rest, on an H100.
# KERNEL_ONLY=1: stop after the kernel part.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
out=${OUT:-/tmp}/bench_gpu.jsonl
: > "$out"
python -c "import jax; print('jax', jax.__version__, jax.devices())"

# The kernel on the device (Triton) against the jnp reference: relative errors, float32 and bfloat16.
timeout 180 python - <<'EOF' || echo "kernel check failed (exit $?)"
import jax, jax.numpy as jnp, numpy as np
from jaxmeta.kernels import fused_adapt, fused_adapt_reference
rng = np.random.default_rng(0)
B, S, Q, widths = 1000, 20, 10, (256, 64, 64, 1)
keys = jax.random.split(jax.random.key(0), 3)
layers = [{"w": jax.random.normal(k, (i, o)) * (2 / i) ** 0.5, "b": jnp.zeros(o)}
          for k, i, o in zip(keys, widths, widths[1:])]
sx, qx = (jnp.asarray(rng.normal(size=(B, n, widths[0])) * 0.1, jnp.float32) for n in (S, Q))
sy = jnp.asarray(rng.integers(1, 6, (B, S)), jnp.float32)
sm = jnp.asarray(np.arange(S)[None] < rng.integers(1, S + 1, B)[:, None])
want = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=0.03, steps=5))(sx, sy, sm, qx)
for dtype in (jnp.float32, jnp.bfloat16):
    got = jax.jit(lambda *a: fused_adapt(*a, layers, lr=0.03, steps=5, compute_dtype=dtype))(sx, sy, sm, qx)
    errs = [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in
            zip(jax.tree.leaves((got.layers, got.predictions)), jax.tree.leaves(want[:2]))]
    print(f"kernel vs reference, {jnp.dtype(dtype).name}: largest relative error {max(errs):.2e}")
EOF
kernel=${OUT:-/tmp}/bench_gpu_kernel.jsonl
: > "$kernel"
for variant in melu-adapt melu-fo; do
  for backend in xla pallas; do
    if ! timeout 150 python -m bench.run --workload melu --variant "$variant" --batch 16384 --steps 10 \
        --backend "$backend" | tee -a "$kernel"; then
      echo "{\"variant\": \"$variant\", \"backend\": \"$backend\", \"failed\": true}" | tee -a "$kernel"
    fi
  done
done
grep -v '"failed"' "$kernel" >> "$out" || true
python - "$kernel" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
by = {(r["variant"], r["backend"]): r for r in rows}
print("| variant | B | XLA users/s | Pallas users/s | Pallas / XLA | XLA ms | Pallas ms |")
print("|---|---|---|---|---|---|---|")
for variant in ("melu-adapt", "melu-fo"):
    x, p = by.get((variant, "xla"), {}), by.get((variant, "pallas"), {})
    ratio = f"{p['tasks_per_s'] / x['tasks_per_s']:.2f}" if "tasks_per_s" in x and "tasks_per_s" in p else "n/a"
    print(f"| {variant} | 16384 | {x.get('tasks_per_s', 'failed')} | {p.get('tasks_per_s', 'failed')} | {ratio} "
          f"| {x.get('step_ms', '')} | {p.get('step_ms', '')} |")
EOF
if [ "${KERNEL_ONLY:-0}" = 1 ]; then exit 0; fi

for variant in melu melu-fo melu-adapt; do
  timeout 120 python -m bench.run --workload melu --variant "$variant" --batch 1024 16384 --steps 10 | tee -a "$out"
done
timeout 150 python -m bench.run --workload scale --batch 32 256 2048 16384 32768 65536 --steps 5 | tee -a "$out"
python -m bench.table "$out"
