"""The benchmarks' result tables: aligned text for a terminal, or Markdown for BENCHMARKS.md.

Imported by the benchmark scripts as a sibling module (a script's own folder is first on its import path).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
                 right: Collection[int] = ()) -> str:
    """`rows` under `header`; the columns numbered in `right` are right-aligned."""
    if markdown:
        rule = "|" + "".join("---:|" if i in right else "---|" for i in range(len(header)))
        return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in [header, *rows])
