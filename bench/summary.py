"""The benchmarks' shared statistics: a measurement's samples on both daemons, and one table.

A `Row` holds every sample of one measurement on containerd and on berthd (a figure measured
once per round is the list of its per-round values), the unit they are in and the target the
ratio berthd/containerd of their medians should meet. `print_table` prints rows as the summary
table of `bench/all.py` (and of `bench/growth.py`): the medians with the min and max beside them
(the machine's noise), the ratio of the medians, the target and whether it is met. The `spread`
helpers format the one-line figures the benchmarks print in their own reports.

A target reads ``"≤ 1.0"`` or ``"≥ 1.0"``, bounding the ratio berthd/containerd of the medians;
``"berthd ≤ 10.0"`` bounds berthd's own median instead (a growth factor); any text after the
bound is a comment (``"≤ 1 (memory)"``); an empty target means the row is for information.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

_TARGET = re.compile(r"(?P<subject>berthd )?(?P<op>[≤≥]) ?(?P<bound>\d+(?:\.\d+)?)")


_Args = TypeVar("_Args")
_Results = TypeVar("_Results")


def collect(argv: Sequence[str] | None, parse: Callable[[Sequence[str] | None], _Args],
            measure: Callable[[_Args], _Results], report: Callable[[_Results], object],
            rows: Callable[[_Results], list[Row]]) -> list[Row]:
    """A benchmark run with these command-line arguments: measured, its report printed, its
    rows returned (each bench's ``collect``, which bench/all.py calls)."""
    results = measure(parse(argv))
    report(results)
    return rows(results)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    """One measurement: every sample on each daemon, in ``unit``; or a failed benchmark."""

    name: str
    unit: str
    containerd: list[float]
    berthd: list[float]
    target: str = ""
    error: str = ""  # set when the benchmark failed (then the sample lists are empty)

    @classmethod
    def failed(cls, name: str, error: str) -> Row:
        return cls(name=name, unit="", containerd=[], berthd=[], error=error)

    def berthd_median(self) -> float | None:
        return median(self.berthd) if self.berthd else None

    def ratio(self) -> float | None:
        """berthd/containerd of the medians (None without samples or with a zero median)."""
        if not self.containerd or not self.berthd or median(self.containerd) == 0:
            return None
        return median(self.berthd) / median(self.containerd)

    def met(self) -> bool | None:
        """Whether the target is met; None with no target (or nothing to judge)."""
        found = _TARGET.match(self.target)
        if found is None:
            return None
        value = self.berthd_median() if found["subject"] else self.ratio()
        if value is None:
            return None
        bound = float(found["bound"])
        return value <= bound if found["op"] == "≤" else value >= bound


def decimals(value: float) -> int:
    """Decimals to print ``value`` with: 3 significant digits, or more for 100 and above."""
    if abs(value) >= 100:
        return 0
    return 1 if abs(value) >= 10 else 2


def cell(values: Sequence[float], unit: str) -> str:
    """``median unit (min-max)``, all with the median's decimals; an em dash without
    samples."""
    if not values:
        return "—"
    places = decimals(median(values))
    space = "" if unit == "x" else " "
    return (f"{median(values):.{places}f}{space}{unit} "
            f"({min(values):.{places}f}-{max(values):.{places}f})")


def spread(values: Sequence[float], unit: str = "ms", scale: float = 1000.0, width: int = 6,
           digits: int = 1) -> str:
    """``median  77.3 ms (min 58.7, max 101.3)`` of ``values`` times ``scale`` (seconds to
    milliseconds by default): the benchmarks' report lines."""
    def fmt(value: float, pad: int = 0) -> str:
        return f"{value * scale:{pad}.{digits}f}"
    return (f"median {fmt(median(values), width)} {unit} "
            f"(min {fmt(min(values))}, max {fmt(max(values))})")


def spread_seconds(values: Sequence[float]) -> str:
    """``median (min-max)`` of seconds, in seconds or milliseconds, whichever reads better."""
    if median(values) >= 1:
        return f"{median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"
    return (f"{median(values) * 1000:.1f} ms "
            f"({min(values) * 1000:.1f}-{max(values) * 1000:.1f})")


def _verdict(row: Row) -> str:
    met = row.met()
    return "—" if met is None else ("yes" if met else "NO")


def _first_line(text: str, limit: int = 110) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "(no message)"
    return line if len(line) <= limit else line[:limit - 1] + "…"


def print_table(rows: Sequence[Row], title: str = "Summary", out: TextIO = sys.stdout) -> None:
    """The rows as one table: measurement, sample counts, containerd and berthd median
    (min-max), ratio of the medians, target, met; a failed row shows its error instead."""
    header = ("measurement", "n", "containerd", "berthd", "ratio", "target", "met")
    table = []
    for row in rows:
        if row.error:
            continue
        ratio = row.ratio()
        table.append((row.name, f"{len(row.containerd)}/{len(row.berthd)}",
                      cell(row.containerd, row.unit), cell(row.berthd, row.unit),
                      "—" if ratio is None else f"{ratio:.2f}", row.target or "—",
                      _verdict(row)))
    widths = [max([len(h), *(len(line[i]) for line in table)]) for i, h in enumerate(header)]
    widths[0] = max([widths[0], *(len(row.name) for row in rows)])
    aligns = ("<", ">", ">", ">", ">", "<", "<")

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths, strict=True))

    print(f"\n{title} (median (min-max); n = samples containerd/berthd; "
          "ratio = berthd/containerd of the medians)", file=out)
    print(line(header).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    rendered = iter(table)
    for row in rows:
        if row.error:
            print(f"{row.name:{widths[0]}}  FAILED: {_first_line(row.error)}", file=out)
        else:
            print(line(next(rendered)).rstrip(), file=out)
    out.flush()


def to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each row's fields (every sample) with its medians, min, max, ratio and verdict."""
    out = []
    for row in rows:
        item: dict[str, Any] = asdict(row)
        for side in ("containerd", "berthd"):
            values = getattr(row, side)
            item[f"{side}_median"] = median(values) if values else None
            item[f"{side}_min"] = min(values) if values else None
            item[f"{side}_max"] = max(values) if values else None
        item["ratio"] = row.ratio()
        item["met"] = row.met()
        out.append(item)
    return out


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.write_text(json.dumps(to_json(rows), indent=2, ensure_ascii=False) + "\n")
