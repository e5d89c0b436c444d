"""Formats JSON lines of ``bench.run`` (read from files or stdin) as a Markdown table.

    python -m bench.run --workload scale | tee scale.jsonl
    python -m bench.table scale.jsonl
"""

from __future__ import annotations

import fileinput
import json
import sys

COLUMNS = ("workload", "variant", "batch", "tasks_per_s", "step_ms", "compile_s", "peak_mem_mb", "padded_fraction",
           "device")


def table(records: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        if r.get("fits") is False:
            lines.append(f"| {r['workload']} | {r['variant']} | {r['batch']} | does not fit | | | | | |")
            continue
        if "tasks_per_s" not in r:  # not a timing (the adapt workload's ratio lines, a failed run)
            continue
        cells = [f"{r[c]:,.0f}" if c == "tasks_per_s" else str(r.get(c, "")) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    records = [json.loads(line) for line in fileinput.input(argv if argv is not None else sys.argv[1:])
               if line.startswith("{")]
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
