"""Every benchmark in one command, and one table of all their ratios.

    .venv/bin/python bench/all.py [--quick] [--json PATH] [--only NAME ...]

Runs, in turn, each with its own daemons and clean-up exactly as when run alone:

    start    bench/run.py        idle daemon RSS, `ctr run --rm` latency, memory with containers
    pull     bench/pull.py       `ctr images pull` and `berth pull` of the big image, peak RSS
    cri      bench/cri.py        RunPodSandbox, Create+Start container, memory per pod
    streaming  bench/streaming.py  kubectl exec, port-forward throughput
    growth   bench/growth.py     concurrent pulls, 10-at-a-time starts, listings at two sizes

Each prints its own report as it finishes; at the end one table gives every measurement's
containerd and berthd median with the min and max beside it (the machine's noise), the number
of samples, the ratio berthd/containerd of the medians, the target and whether it is met
(`bench/summary.py` says how targets read). `--json PATH` also writes every row, with all its
samples, to PATH.

By default each benchmark runs with the full settings it documents (run.py --runs 20
--containers 30, pull.py --rounds 3, cri.py --runs 20 --pods 10, streaming.py --runs 20,
growth.py's defaults): that takes a long time. `--quick` uses small counts, for a smoke run
whose figures are too few to trust. A benchmark that fails is a FAILED row (its traceback is
printed when it fails) and the others still run; the exit status is then 1. Needs root; pull.py
needs its image, built once under /var/tmp/berth-bench (`bench/pull.py --build-only`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cri
import growth
import grpc
import pull
import run
import streaming
from summary import Row, print_table, write_json


@dataclass(frozen=True)
class Bench:
    name: str
    collect: Callable[[Sequence[str] | None], list[Row]]
    quick: tuple[str, ...]  # arguments of a smoke run; the full run passes none (the defaults)


BENCHES = (
    Bench("start", run.collect, ("--runs", "3", "--containers", "5", "--idle-rounds", "2")),
    Bench("pull", pull.collect, ("--rounds", "1")),
    Bench("cri", cri.collect, ("--runs", "3", "--pods", "2")),
    Bench("streaming", streaming.collect, ("--runs", "3")),
    Bench("growth", growth.collect, ("--small", "10", "--large", "30", "--runs", "1",
                                     "--start-rounds", "1", "--tasks", "10")),
)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", type=Path, help="also write every row and sample here")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHES],
                        help="run only these benchmarks (repeatable)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    return args


def describe(error: Exception) -> str:
    """The error in one line for the table (a gRPC error: its status code and details)."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return f"gRPC {error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


def run_one(bench: Bench, quick: bool) -> list[Row]:
    """The benchmark's rows; if it fails, a FAILED row with its error (traceback printed)."""
    argv = list(bench.quick) if quick else []
    print(f"\n=== {bench.name}: bench/{bench.collect.__module__}.py {' '.join(argv)}".rstrip(),
          flush=True)
    started = time.monotonic()
    try:
        rows = bench.collect(argv)
    except Exception as error:  # reported as a row of the table; the next benchmark still runs
        traceback.print_exc()
        return [Row.failed(bench.name, describe(error))]
    print(f"=== {bench.name}: {time.monotonic() - started:.0f} s", flush=True)
    if not rows:
        return [Row.failed(bench.name, "no rows: the benchmark measured nothing")]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    rows: list[Row] = []
    with pull.interrupts_as_exceptions():  # SIGTERM/SIGHUP: every benchmark's clean-up runs
        for bench in BENCHES:
            if args.only is None or bench.name in args.only:
                rows += run_one(bench, args.quick)
    print_table(rows, title=f"All benchmarks{' (--quick)' if args.quick else ''}, "
                f"{time.monotonic() - started:.0f} s")
    if args.json:
        write_json(rows, args.json)
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
