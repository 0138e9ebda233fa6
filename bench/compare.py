"""The change between two ``bench/run_all`` results files, figure by figure.

    .venv/bin/python -m bench.compare OLD.jsonl NEW.jsonl

Each line of a results file is one bench's JSON object (``benchmark`` names it). Every number
both runs have, nested ones as dotted keys (``rss_mb.peak``), is printed with its old and new
value and the change in percent; targets (any key with "target" in its name) are left out:
they are not measurements. Which
way is better depends on the figure, so the table only says how much it moved; a figure one
run lacks is listed as such. Prints to stdout; ``bench/run_all --compare`` sends it to stderr
so that its own stdout stays JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SKIPPED = frozenset({"benchmark", "commit", "date", "box"})
WIDTH = 44
"""Of the figure column: the longest names (``kinds.plain_scan.payload_bytes_per_event``)."""


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The results in ``path`` by bench name (the last line of a bench wins)."""
    runs: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            runs[str(result.get("benchmark", f"line{len(runs) + 1}"))] = result
    return runs


def figures(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in ``result``, nested keys joined with dots; booleans are not figures."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if (not prefix and key in SKIPPED) or "target" in key:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(figures(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def change(old: float, new: float) -> str:
    """``new`` against ``old`` in percent."""
    if old == new:
        return "="
    if old == 0:
        return "new"
    return f"{(new - old) / abs(old) * 100:+.1f} %"


def compare(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """The lines of the comparison table."""
    header = (
        f"old: {_run(old)}",
        f"new: {_run(new)}",
        "",
        f"{'bench':<12} {'figure':<{WIDTH}} {'old':>12} {'new':>12} {'change':>9}",
    )
    lines = list(header)
    for bench in [*new, *(b for b in old if b not in new)]:
        if bench not in old or bench not in new:
            lines.append(f"{bench:<12} (only in the {'new' if bench in new else 'old'} run)")
            continue
        before, after = figures(old[bench]), figures(new[bench])
        for name in [*after, *(n for n in before if n not in after)]:
            if name not in before or name not in after:
                where = "new" if name in after else "old"
                lines.append(f"{bench:<12} {name:<{WIDTH}} (only in the {where} run)")
                continue
            lines.append(
                f"{bench:<12} {name:<{WIDTH}} {before[name]:>12g} {after[name]:>12g}"
                f" {change(before[name], after[name]):>9}"
            )
    return lines


def _run(results: dict[str, dict[str, Any]]) -> str:
    first = next(iter(results.values()), {})
    return f"commit {first.get('commit', '?')}, {first.get('date', 'date unknown')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(compare(load(args.old), load(args.new))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
