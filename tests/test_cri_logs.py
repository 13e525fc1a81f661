"""CRI container logs written outside the formatter's unit tests: by Berth's shim for a
``crilog://`` stdout (real shim, real runc, busybox), compared with what containerd 1.6.20's own
CRI writes for the same containers, and by berthd's copier from real FIFOs
(:class:`berth.cri.logs.LogCopier`) for shims that are not Berth's.

Records are compared with their timestamps parsed out (each checked for its RFC 3339 shape);
records of stdout and stderr are compared per stream, since the two pipes are read
independently. Nothing waits on timing for a result: each test waits for an exit, an EOF or a
record to appear, and cleans up its shims, containers and mounts however it ends.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_fixtures import CRI, container_config
from images import ImageInfo
from reference_containerd import ReferenceContainerd
from test_crilog import Record, records, umask_022
from test_shim import Shim, api, busybox_rootfs, container_spec, default_spec, run, workdir

from berth import crilog, errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.logs import LogCopier

# fixtures shared with test_shim and test_crilog
__all__ = ["busybox_rootfs", "default_spec", "umask_022", "workdir"]


def by_stream(found: list[Record]) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {"stdout": [], "stderr": []}
    for stream, tag, content in found:
        out[stream].append((tag, content))
    return out


def read_records(path: Path) -> list[Record]:
    return records(path.read_bytes())


async def wait_for_content(path: Path, needle: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and needle in path.read_bytes()):
        if time.monotonic() > deadline:
            got = path.read_bytes() if path.exists() else None
            raise AssertionError(f"{needle!r} not in {path} within {timeout}s: {got!r}")
        await asyncio.sleep(0.02)


# -- Berth's shim writes the log ---------------------------------------------------------------


async def run_to_exit(shim: Shim, **request: Any) -> int:
    """Create, start, wait for and delete the task (delete drains the output)."""
    await shim.task.Create(shim.create_request(**request))
    await shim.task.Start(api.StartRequest(id=shim.id))
    status = (await shim.task.Wait(api.WaitRequest(id=shim.id))).exit_status
    await shim.task.Delete(api.DeleteRequest(id=shim.id))
    return int(status)


@pytest.mark.needs_root
def test_shim_writes_both_streams(workdir: Path, busybox_rootfs: Path,
                                  default_spec: dict[str, Any], umask_022: None) -> None:
    """stdout and stderr as F records, the unterminated last line as P, a CRLF line and an
    empty one as containerd writes them; the log's directory and file made as containerd's
    CRI makes them."""
    script = r"echo out; echo err >&2; printf 'dos\r\n\n'; printf partial"
    spec = container_spec(default_spec, ["sh", "-c", script])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log = workdir / "pods" / "ns_pod_uid" / "c" / "0.log"
            assert await run_to_exit(shim, stdout=crilog.format_uri(str(log))) == 0
            assert by_stream(read_records(log)) == {
                "stdout": [("F", b"out"), ("F", b"dos"), ("F", b""), ("P", b"partial")],
                "stderr": [("F", b"err")]}
            assert stat.S_IMODE(log.stat().st_mode) == 0o640
            assert stat.S_IMODE(log.parent.stat().st_mode) == 0o755

    run(main())


@pytest.mark.needs_root
def test_shim_splits_long_lines(workdir: Path, busybox_rootfs: Path,
                                default_spec: dict[str, Any]) -> None:
    """Lines over the URI's max_line_size become P records of exactly that size; the default
    is containerd's 16 KiB; -1 is no limit."""
    script = "head -c 2500 /dev/zero | tr '\\0' a; echo; echo short; " \
             "head -c 40000 /dev/zero | tr '\\0' b; echo"
    spec = container_spec(default_spec, ["sh", "-c", script])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log = workdir / "limited.log"
            assert await run_to_exit(shim, stdout=crilog.format_uri(str(log), 1000)) == 0
            assert by_stream(read_records(log))["stdout"] == [
                ("P", b"a" * 1000), ("P", b"a" * 1000), ("F", b"a" * 500), ("F", b"short"),
                *[("P", b"b" * 1000)] * 39, ("F", b"b" * 1000)]

            log = workdir / "default.log"
            assert await run_to_exit(shim, stdout=f"crilog://{log}") == 0
            assert by_stream(read_records(log))["stdout"] == [
                ("F", b"a" * 2500), ("F", b"short"), ("P", b"b" * 16384), ("P", b"b" * 16384),
                ("F", b"b" * (40000 - 2 * 16384))]

            log = workdir / "unlimited.log"
            assert await run_to_exit(shim, stdout=crilog.format_uri(str(log), -1)) == 0
            assert by_stream(read_records(log))["stdout"] == [
                ("F", b"a" * 2500), ("F", b"short"), ("F", b"b" * 40000)]

    run(main())


@pytest.mark.needs_root
def test_shim_follows_rotation(workdir: Path, busybox_rootfs: Path,
                               default_spec: dict[str, Any]) -> None:
    """The kubelet renames the log while the container writes on: a new file appears at the
    path and gets the later lines; no line is lost or written twice."""
    script = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.01; done"
    spec = container_spec(default_spec, ["sh", "-c", script])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log = workdir / "logs" / "0.log"
            rotated = workdir / "logs" / "0.log.20260101-000000"
            await shim.task.Create(shim.create_request(stdout=crilog.format_uri(str(log))))
            await shim.task.Start(api.StartRequest(id=shim.id))
            await wait_for_content(log, b"line-5\n")
            log.rename(rotated)
            await wait_for_content(log, b"F line-")  # a new file, with later lines
            first_new = int(read_records(log)[0][2].split(b"-")[1])
            await wait_for_content(log, f"line-{first_new + 5}\n".encode())
            await shim.task.Kill(api.KillRequest(id=shim.id, signal=9, all=True))
            await shim.task.Wait(api.WaitRequest(id=shim.id))
            await shim.task.Delete(api.DeleteRequest(id=shim.id))
            old = [r[2] for r in read_records(rotated)]
            new = [r[2] for r in read_records(log)]
            assert old + new == [f"line-{i}".encode() for i in range(len(old) + len(new))]
            assert len(old) >= 6 and len(new) >= 6

    run(main())


@pytest.mark.needs_root
def test_shim_terminal_output_is_stdout(workdir: Path, busybox_rootfs: Path,
                                        default_spec: dict[str, Any]) -> None:
    """With a terminal the pty's one output is logged as stdout (its \\r\\n line ends
    stripped), stderr included."""
    script = "echo tty-out; echo tty-err >&2; tty; printf end"
    spec = container_spec(default_spec, ["sh", "-c", script], terminal=True)

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log = workdir / "tty.log"
            assert await run_to_exit(shim, terminal=True,
                                     stdout=crilog.format_uri(str(log))) == 0
            assert read_records(log) == [("stdout", "F", b"tty-out"), ("stdout", "F", b"tty-err"),
                                         ("stdout", "F", b"/dev/pts/0"), ("stdout", "P", b"end")]

    run(main())


# What containerd 1.6.20's CRI writes for the same output: CRLF, an empty line, a lone CR,
# lines over the maximum (16 here), an unterminated line on each stream (one ending in CR).
TRICKY = (r"printf 'dos\r\n\ncr\rmid\n'; echo err >&2; printf 'long%.0s' $(seq 10); echo; "
          r"printf 'errpartial\r' >&2; printf partial")
TRICKY_RECORDS = {
    "stdout": [("F", b"dos"), ("F", b""), ("F", b"cr\rmid"), ("P", b"long" * 4),
               ("P", b"long" * 4), ("F", b"long" * 2), ("P", b"partial")],
    "stderr": [("F", b"err"), ("P", b"errpartial\r")]}
TTY = "echo a; echo b >&2; printf end"
TTY_RECORDS = {"stdout": [("F", b"a"), ("F", b"b"), ("P", b"end")], "stderr": []}


@pytest.mark.needs_root
def test_shim_writes_what_containerds_cri_writes(workdir: Path, busybox_rootfs: Path,
                                                 default_spec: dict[str, Any], pause_image: str,
                                                 busybox_image: ImageInfo) -> None:
    """The same containers under containerd's own CRI (a host-network pod, its
    max_container_log_line_size 16) and under Berth's shim with a crilog:// URI give the same
    records."""
    logs = workdir / "containerd-logs"
    logs.mkdir()
    theirs = {}
    with ReferenceContainerd(cri=True, cri_config=f'  sandbox_image = "{pause_image}"\n'
                             "  max_container_log_line_size = 16\n") as containerd:
        c = CRI(containerd.address, "containerd")
        try:
            c.pull(busybox_image.ref)
            host_network = pb.NamespaceOption(network=pb.NODE)
            pod = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name="logs", uid="uid-logs", namespace="default"),
                log_directory=str(logs), linux=pb.LinuxPodSandboxConfig(
                    security_context=pb.LinuxSandboxSecurityContext(
                        namespace_options=host_network)))
            pod_id = c.run_pod(pod)
            for name, script, tty, want in (("tricky", TRICKY, False, TRICKY_RECORDS),
                                            ("tty", TTY, True, TTY_RECORDS)):
                c.wait_exited(c.run(pod_id, container_config(name, busybox_image.ref, script,
                                                             tty=tty), pod))
                # The daemon's logger may write the last records a moment after the exit.
                deadline = time.monotonic() + 10
                while (got := by_stream(read_records(logs / f"{name}.log"))) != want \
                        and time.monotonic() < deadline:
                    time.sleep(0.02)
                theirs[name] = got
        finally:
            c.remove_everything()
            c.close()
    assert theirs == {"tricky": TRICKY_RECORDS, "tty": TTY_RECORDS}

    async def main() -> None:
        for name, script, tty in (("tricky", TRICKY, False), ("tty", TTY, True)):
            spec = container_spec(default_spec, ["sh", "-c", script], terminal=tty)
            async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
                log = workdir / f"{name}.log"
                assert await run_to_exit(shim, terminal=tty,
                                         stdout=crilog.format_uri(str(log), 16)) == 0
                assert by_stream(read_records(log)) == theirs[name], name

    run(main())


@pytest.mark.needs_root
def test_shim_with_exec_and_runtime_failure(workdir: Path, busybox_rootfs: Path,
                                            default_spec: dict[str, Any]) -> None:
    """runc's own failure text stays out of the log; a bad URI is InvalidArgument; an exec'd
    process can log to a file of its own."""
    spec = container_spec(default_spec, ["no-such-command"])

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            log = workdir / "failed.log"
            with pytest.raises(errdefs.BerthError, match="no-such-command"):
                await shim.task.Create(shim.create_request(stdout=crilog.format_uri(str(log))))
            assert log.read_bytes() == b""
            with pytest.raises(errdefs.InvalidArgument, match="must be absolute"):
                await shim.task.Create(shim.create_request(stdout="crilog://relative/x.log"))

    run(main())


# -- berthd's copier from FIFOs ----------------------------------------------------------------


class Writer:
    """The shim's side of a FIFO: opened for writing (once the copier reads it)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.set_blocking(self.fd, True)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def fifos(tmp_path: Path) -> tuple[Path, Path]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    os.mkfifo(out)
    os.mkfifo(err)
    return out, err


@pytest.fixture
def copiers() -> Iterator[list[LogCopier]]:
    """Copiers a test made: closed at the end whatever happened (writers of the test's own
    are closed by then, or the close times out)."""
    made: list[LogCopier] = []
    yield made
    for copier in made:
        copier.close(timeout=0)


def test_copier_writes_both_streams(tmp_path: Path, fifos: tuple[Path, Path],
                                    copiers: list[LogCopier], umask_022: None) -> None:
    """Opening the FIFOs does not wait for a writer, and a FIFO with no writer yet is not
    EOF; records as the shim writes them; the copy ends at both EOFs and closes the log."""
    log = tmp_path / "pods" / "c" / "0.log"
    copier = LogCopier(str(log), stdout=str(fifos[0]), stderr=str(fifos[1]), max_line_size=8)
    copiers.append(copier)
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o755
    assert not copier.wait(timeout=0.2)  # no writer yet: still waiting for one
    out, err = Writer(fifos[0]), Writer(fifos[1])
    out.write(b"hello\n0123456789\r\n")
    err.write(b"oops\n\n")
    out.write(b"unterminated\r")
    out.close()
    err.close()
    assert copier.wait(timeout=10)
    assert by_stream(read_records(log)) == {
        "stdout": [("F", b"hello"), ("P", b"01234567"), ("F", b"89"), ("P", b"untermin"),
                   ("P", b"ated\r")],
        "stderr": [("F", b"oops"), ("F", b"")]}
    with pytest.raises(errdefs.FailedPrecondition):
        copier.reopen()  # the copy has ended


def test_copier_reopen_and_rotation(tmp_path: Path, fifos: tuple[Path, Path],
                                    copiers: list[LogCopier]) -> None:
    """A rename is followed on the next write; reopen() (ReopenContainerLog) switches at once,
    and makes the path's directory again if it went."""
    log = tmp_path / "d" / "0.log"
    copier = LogCopier(str(log), stdout=str(fifos[0]))
    copiers.append(copier)
    out = Writer(fifos[0])
    try:
        out.write(b"one\n")
        deadline = time.monotonic() + 10
        while b"one" not in log.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        log.rename(tmp_path / "first.log")
        copier.reopen()
        assert log.exists() and log.read_bytes() == b""
        out.write(b"two\n")
        deadline = time.monotonic() + 10
        while b"two" not in log.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        log.rename(tmp_path / "second.log")  # no reopen: followed on the next write
        out.write(b"three\n")
    finally:
        out.close()
    assert copier.wait(timeout=10)
    assert [r[2] for r in read_records(tmp_path / "first.log")] == [b"one"]
    assert [r[2] for r in read_records(tmp_path / "second.log")] == [b"two"]
    assert [r[2] for r in read_records(log)] == [b"three"]


def test_copier_output_hook(tmp_path: Path, fifos: tuple[Path, Path],
                            copiers: list[LogCopier]) -> None:
    """The hook sees the raw output of each stream, then b"" at its end; a hook that raises
    does not stop the log."""
    seen: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    lock = threading.Lock()

    def hook(stream: str, data: bytes) -> None:
        with lock:
            seen[stream].append(data)
        if data == b"boom\n":
            raise RuntimeError("attach client gone")

    log = tmp_path / "0.log"
    copier = LogCopier(str(log), stdout=str(fifos[0]), stderr=str(fifos[1]), on_output=hook)
    copiers.append(copier)
    out, err = Writer(fifos[0]), Writer(fifos[1])
    err.write(b"boom\n")
    err.close()
    out.write(b"raw\r\nbytes")
    out.close()
    assert copier.wait(timeout=10)
    assert b"".join(seen["stdout"]) == b"raw\r\nbytes" and seen["stdout"][-1] == b""
    assert seen["stderr"] == [b"boom\n", b""]
    assert by_stream(read_records(log)) == {"stdout": [("F", b"raw"), ("P", b"bytes")],
                                            "stderr": [("F", b"boom")]}


def test_copier_close_stops_waiting(tmp_path: Path, fifos: tuple[Path, Path]) -> None:
    """close(timeout) ends a copy whose writer never closes (or never came): what the FIFO
    holds is still logged, the unterminated line flushed."""
    log = tmp_path / "0.log"
    copier = LogCopier(str(log), stdout=str(fifos[0]), stderr=str(fifos[1]))
    out = Writer(fifos[0])
    try:
        out.write(b"kept\nhalf")
        copier.close(timeout=0.3)  # stderr never had a writer; stdout's stays open
        assert copier.wait(timeout=0)
        assert read_records(log) == [("stdout", "F", b"kept"), ("stdout", "P", b"half")]
        copier.close()  # idempotent
    finally:
        out.close()


def test_copier_only_stdout_and_errors(tmp_path: Path, fifos: tuple[Path, Path],
                                       copiers: list[LogCopier]) -> None:
    """stderr may be "" (a terminal); a missing FIFO is NotFound and leaves nothing open."""
    log = tmp_path / "0.log"
    copier = LogCopier(str(log), stdout=str(fifos[0]))
    copiers.append(copier)
    out = Writer(fifos[0])
    out.write(b"tty\r\n")
    out.close()
    assert copier.wait(timeout=10)
    assert read_records(log) == [("stdout", "F", b"tty")]

    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(errdefs.NotFound, match="does not exist"):
        LogCopier(str(tmp_path / "1.log"), stdout=str(fifos[1]), stderr=str(tmp_path / "nope"))
    with pytest.raises(errdefs.BerthError, match="failed to create and open log file"):
        LogCopier(str(tmp_path / "0.log" / "x.log"), stdout=str(fifos[1]))
    assert set(os.listdir("/proc/self/fd")) == fds_before
