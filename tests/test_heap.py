"""berth.heap.release gives the free pages a burst of large buffers left in glibc's arenas back
to the system (the buffers of a pull or a layer apply), which free() alone does not when small
live allocations sit between them."""

from __future__ import annotations

import json
import subprocess
import sys

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
