"""A logging binary for shims: appends a container's output to its log file.

A shim given the stdout URI ``binary:///PATH?KEY=VALUE`` runs ``PATH KEY VALUE`` with the
container's stdout on fd 3, its stderr on fd 4 and a readiness pipe on fd 5 (containerd's
``binary://`` logging protocol). ``berth run -d -t`` uses it where ``file://`` cannot serve: a
terminal's output, which containerd 1.6's shim copies only to a FIFO or a logging binary. The
URI is ``binary:///<python>?<this file>=<log file>``: the interpreter runs this file as a
script, which imports nothing from Berth, so the logger starts in milliseconds and stays small
for as long as the container runs.

It opens the log file (never through a symbolic link), closes fd 5 (ready), then appends
whatever arrives on fd 3 and fd 4 until stdout ends (with a terminal, stderr never carries
anything and may never end), takes what stderr still has, and exits; SIGTERM makes it finish
the same way.
"""

from __future__ import annotations

import os
import select
import signal
import sys

STDOUT_FD, STDERR_FD, READY_FD = 3, 4, 5
_CHUNK = 65536


def _drain(fd: int, out: int) -> None:
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, _CHUNK)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        _write(out, data)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: logdriver.py LOG_FILE (run by a shim, see berth.cli.logdriver)",
              file=sys.stderr)
        return 2
    path = argv[0]
    # berth made the file (0640, in its private directory: berth.cli.cio.open_log) before it
    # named it in the URI; a link put there since is not followed.
    out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o640)
    os.close(READY_FD)
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    poller = select.poll()
    open_fds = {STDOUT_FD, STDERR_FD}
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    poller.register(stop_r, select.POLLIN)
    while STDOUT_FD in open_fds:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        if any(fd == stop_r for fd, _ in events):
            break
        for fd, _ in events:
            try:
                data = os.read(fd, _CHUNK)
            except OSError:
                data = b""
            if data:
                _write(out, data)
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
    for fd in open_fds:
        _drain(fd, out)
    os.close(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
