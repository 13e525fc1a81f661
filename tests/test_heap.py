"""berth.heap: release gives the free pages a burst of large buffers left in glibc's arenas back
to the system (the buffers of a pull or a layer apply), which free() alone does not when small
live allocations sit between them; use_one_arena keeps every thread in the main arena, and
berthd uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Ctr
from daemon import Berthd

SCRIPT = """
import json, threading
from berth import heap

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

kept = []
def burst():
    # As a layer's buffers do: large ones, freed, with small live objects between them.
    first = bytearray(1 << 20)
    del first  # glibc raises its mmap threshold: from now on such buffers come from the arena
    big = []
    for _ in range(48):
        big.append(bytearray(900 << 10))
        kept.append(bytearray(2048))
    del big[:]

thread = threading.Thread(target=burst)
thread.start()
thread.join()
before = rss_kib()
heap.release()
print(json.dumps([before, rss_kib()]))
"""


def test_release_returns_freed_buffers_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    before, after = json.loads(out.splitlines()[-1])
    assert before - after > 20 * 1024, (before, after)  # of the 42 MiB freed


def arena_heaps(pid: int | str) -> int:
    """How many arenas besides the main one a process has: glibc reserves each as 64 MiB of
    address space, most of it inaccessible until used."""
    count = 0
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] == "---p" and len(fields) == 5:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                count += end - start >= 32 << 20
    return count


THREADS = """
import sys, threading
from berth import heap
if sys.argv[1] == "one":
    assert heap.use_one_arena()
elif "MALLOC_ARENA_MAX" in __import__("os").environ:
    assert not heap.use_one_arena()
kept = []
def work():
    kept.extend(bytearray(300 << 10) for _ in range(8))
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
sys.path.insert(0, sys.argv[2])
from test_heap import arena_heaps
print(arena_heaps("self"))
"""


def _env_without_malloc_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}


def test_one_arena_for_all_threads() -> None:
    def heaps(mode: str, **env: str) -> int:
        return int(subprocess.run(
            [sys.executable, "-c", THREADS, mode, str(Path(__file__).parent)],
            capture_output=True, text=True, check=True, timeout=60,
            env={**_env_without_malloc_settings(), **env}).stdout)
    assert heaps("default") > 0  # glibc's default: an arena per allocating thread
    assert heaps("one") == 0
    # An operator's own setting is left alone.
    assert heaps("default", MALLOC_ARENA_MAX="4") > 0


def test_berthd_keeps_one_arena(tmp_path: Path) -> None:
    """berthd's threads (gRPC's workers among them) all allocate from the main arena."""
    with Berthd(tmp_path / "berthd") as daemon:
        ctr = Ctr(daemon.address)
        listings = [subprocess.Popen(ctr.command("images", "ls"), stdout=subprocess.DEVNULL)
                    for _ in range(8)]
        for listing in listings:
            assert listing.wait(60) == 0
        assert daemon.proc is not None
        assert arena_heaps(daemon.proc.pid) == 0
