"""W1 with jaxmeta and with its PyTorch peers, one after the other, and their ratios.

Each measurement runs in its own fresh process (``python -m bench.run`` or
``python -m bench.peers.<peer>``), one at a time, so the implementations never
share the CPU or a thread pool; every process prints its JSON record, which
this script collects, echoes, and turns into a table of users per second and
of jaxmeta's speed-up over each peer. Needs the ``peers`` extra
(``pip install -e ".[peers]"``); learn2learn, which does not install from PyPI
as shipped, is built on first use by :mod:`bench.peers.install_learn2learn`.

Usage (from the repository root; from an installed package, ``python -m jaxmeta.bench.compare``)::

    python -m bench.compare                       # every variant, B = 32 and 1024
    python -m bench.compare --variant melu --batch 32 --peers torch.func
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .workloads import WORKLOADS

# The measuring processes import this same copy of the benchmarks: ``bench`` run from a checkout,
# ``jaxmeta.bench`` installed. ROOT is the folder that holds that top-level package.
PACKAGE = __package__
ROOT = Path(sys.modules[PACKAGE.partition(".")[0]].__file__).resolve().parents[1]
PEERS = {"torch.func": "peers.torch_func", "learn2learn": "peers.learn2learn_peer"}  # modules of PACKAGE
# What item 3 of the benchmark issue asks of jaxmeta against each peer, in users per second.
TARGETS = {"torch.func": 3.0, "learn2learn": 15.0}


def _measure(module: str, variant: str, batch: int, steps: int, warmup: int) -> dict:
    """Runs ``python -m PACKAGE.module`` in a fresh process; returns and echoes its JSON record."""
    command = [sys.executable, "-m", f"{PACKAGE}.{module}", "--variant", variant, "--batch", str(batch),
               "--steps", str(steps), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record.setdefault("impl", "jaxmeta")
    print(json.dumps(record), flush=True)
    return record


def table(records: list[dict], peers: list[str]) -> str:
    """Markdown: users/s of every implementation and jaxmeta's ratio to each peer."""
    ours = {(r["variant"], r["batch"]): r["tasks_per_s"] for r in records if r["impl"] == "jaxmeta"}
    theirs = {(r["impl"], r["variant"], r["batch"]): r["tasks_per_s"] for r in records if r["impl"] != "jaxmeta"}
    head = ["variant", "B", "jaxmeta"] + peers + [f"× {p} (aim {TARGETS[p]:g})" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, batch in ours:
        cells = [variant, str(batch), f"{ours[variant, batch]:,.0f}"]
        rates = [theirs.get((p, variant, batch)) for p in peers]
        cells += [f"{r:,.1f}" if r else "–" for r in rates]
        cells += [f"{ours[variant, batch] / r:.1f}" if r else "–" for r in rates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", nargs="+", default=list(WORKLOADS["melu"]), choices=WORKLOADS["melu"])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1024])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=tuple(PEERS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    args = parser.parse_args(argv)
    if "learn2learn" in args.peers:
        from .peers import install_learn2learn

        install_learn2learn.main()  # nothing to do once learn2learn imports
    records = []
    for variant in args.variant:
        for batch in args.batch:
            records.append(_measure("run", variant, batch, args.steps, args.warmup))
            for peer in args.peers:
                records.append(_measure(PEERS[peer], variant, batch, args.steps, args.warmup))
    print(table(records, args.peers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
