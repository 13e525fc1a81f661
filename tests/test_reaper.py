"""The shim's reaper: exits of children nobody waits for yet are kept (a container's init can
exit before the shim has read its pid), but only for the process that had the pid then. A
container can leave the shim many orphans whose exits nobody claims, and pids are reused: an
exit collected before a process came to be is never taken for its own (containerd's shim
drops exits of pids it does not know)."""

from __future__ import annotations

import time

from berth.shim.reaper import Exit, Reaper


def test_an_exit_kept_from_before_a_process_began_is_not_its_own() -> None:
    reaper = Reaper()
    got: list[Exit] = []
    old = Exit(4242, 137, time.time(), time.monotonic())
    reaper._deliver(old)  # an orphan's exit, collected and kept
    began = time.monotonic()
    reaper.watch(4242, got.append, since=began)  # a new process has pid 4242 now
    assert got == []  # the old exit is not its own: it waits for its real one
    new = Exit(4242, 0, time.time(), time.monotonic())
    reaper._deliver(new)
    assert got == [new]


def test_an_exit_collected_after_the_process_began_is_delivered_at_once() -> None:
    """The init that exits before the shim has read its pid from runc's pid file."""
    reaper = Reaper()
    began = time.monotonic()
    early = Exit(4343, 1, time.time(), time.monotonic())
    reaper._deliver(early)
    got: list[Exit] = []
    reaper.watch(4343, got.append, since=began)
    assert got == [early]
