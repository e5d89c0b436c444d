"""Plots W3 (``scale``) records of ``bench.run``: users per second and peak memory against B.

    python -m bench.run --workload scale > scale.jsonl
    python -m bench.plot scale.jsonl bench/scale.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_scale(records: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = [r for r in records if r.get("workload") == "scale" and r.get("fits", True)]
    if not fits:
        raise ValueError("no W3 (workload 'scale') records to plot: pass the output of bench.run --workload scale.")
    batches = [r["batch"] for r in fits]
    fig, speed = plt.subplots(figsize=(6.4, 4.0))
    speed.plot(batches, [r["tasks_per_s"] for r in fits], "o-", color="tab:blue", label="users / s")
    speed.set_xscale("log", base=2)
    speed.set_xlabel("users per outer step (B)")
    speed.set_ylabel("meta-training users / s", color="tab:blue")
    memory = speed.twinx()
    memory.plot(batches, [r["peak_mem_mb"] / 1024 for r in fits], "s--", color="tab:red", label="peak memory")
    memory.set_ylabel("peak memory (GiB)", color="tab:red")
    speed.set_ylim(bottom=0)
    memory.set_ylim(bottom=0)
    speed.set_title(f"W3 scale: MAML second order, MeLU ({fits[0]['device']}, jax {fits[0]['jax_version']})")
    lines = speed.get_lines() + memory.get_lines()
    speed.legend(lines, [line.get_label() for line in lines], loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    source, target = argv if argv is not None else sys.argv[1:]
    records = [json.loads(line) for line in Path(source).read_text().splitlines() if line.startswith("{")]
    print(plot_scale(records, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
