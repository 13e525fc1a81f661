"""No socket Berth serves is reachable from a host-network container (CVE-2020-15257 class).

containerd before 1.3.9/1.4.3 had its shims listen on *abstract* unix sockets
(``@/containerd-shim/...sock``). Abstract names live in the network namespace, not the file
system, and carry no permissions: a container started with the host's network (``ctr run
--net-host``, ``hostNetwork: true``) saw them in ``/proc/net/unix``, connected, and drove the
shim's API as root (create a task with any bundle: a host escape). containerd's fix put the
shim sockets in the file system (``/run/containerd/s/<hash>``, mode 0600 in a directory only
root enters), where a container's own mount namespace cannot name them.

Berth listens in these places, and each must be a file-system socket, private to root, never
abstract: the shims (``/run/berth/s/<hash>``, :mod:`berth.shimgroups`), the shim zygote
(``/run/berth/s/zygote-<identity>``, :mod:`berth.shim.zygote`), berthd's ttrpc endpoint that
shims forward events to (``<address>.ttrpc``), berthd's gRPC socket, and the console sockets a
shim gives runc for a terminal (``--console-socket``).

Checked through the real ``ctr`` against a real berthd on Berth's shim and real runc:

* every unix socket that berthd, its shims and the zygote hold is looked up in the host's
  ``/proc/net/unix`` (inodes from ``/proc/PID/fd``): none may have an abstract name, and each
  one they listen on must be a root-owned socket file, 0600 (the gRPC socket 0660, as
  containerd's), in directories nobody but root may list or write;
* the console sockets are caught as runc is handed them (a ``--runc-binary`` wrapper records
  what it was given and how it looks, then runs the real runc), for ``ctr run -t`` and
  ``ctr tasks exec -t``;
* a ``ctr run --net-host`` container tries to connect to every unix socket it can name (it sees
  the host's ``/proc/net/unix``): it must reach none of Berth's. So that this can fail at all, a
  canary abstract socket of the test's own must be reached by the same probe, and a canary
  file-system socket must not be.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from processes import argument_after, read_argv
from test_ctr_tasks import Session, wait_until

from berth.shimlaunch import ZYGOTE_FLAG

pytestmark = pytest.mark.needs_root

SHIM_BINARY = "containerd-shim-berth-v2"
RUNC = "/usr/sbin/runc"
# /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; __SO_ACCEPTCON in Flags
# marks a listening socket.
_ACCEPTCON = 0x10000
# The probe runs the host's Python inside the busybox container: /usr and the loader's
# directories are bound read-only (the probe could be any program; Python is at hand).
HOST_PYTHON = "/usr/bin/python3"
PROBE_MOUNTS = [("/usr", "/usr"), ("/usr/lib", "/lib"), ("/usr/lib64", "/lib64")]

# Run inside the host-network container: connect to every named unix socket in the network
# namespace's table, as its type, and say what happened (JSON on stdout). It sends nothing.
PROBE = r"""
import errno, json, socket
kinds = {1: socket.SOCK_STREAM, 2: socket.SOCK_DGRAM, 5: socket.SOCK_SEQPACKET}
found = []
with open("/proc/net/unix") as f:
    next(f)
    for line in f:
        cols = line.rstrip("\n").split(None, 7)
        if len(cols) < 8:
            continue
        name = cols[7]
        address = "\0" + name[1:] if name.startswith("@") else name
        s = socket.socket(socket.AF_UNIX, kinds.get(int(cols[4], 16), socket.SOCK_STREAM))
        s.settimeout(0.5)
        try:
            s.connect(address)
            result = "connected"
        except OSError as e:
            result = errno.errorcode.get(e.errno or 0, type(e).__name__)
        finally:
            s.close()
        found.append({"inode": int(cols[6]), "name": name, "result": result})
print(json.dumps(found))
"""


# -- what the kernel shows -------------------------------------------------------------------


@dataclass(frozen=True)
class UnixSocket:
    inode: int
    name: str  # "" unbound, "@..." abstract, else a path
    listening: bool


def unix_table() -> dict[int, UnixSocket]:
    """The unix sockets of this (the host's) network namespace, by inode."""
    table = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            cols = line.rstrip("\n").split(None, 7)
            inode = int(cols[6])
            table[inode] = UnixSocket(inode, cols[7] if len(cols) > 7 else "",
                                      bool(int(cols[3], 16) & _ACCEPTCON))
    return table


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds ({} if it is gone)."""
    found = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def berth_processes(d: Berthd) -> dict[int, str]:
    """berthd, the shims it started (``containerd-shim-berth-v2 ... -address ADDRESS``) and
    the shim zygotes (shared by every berthd on the host): pid -> what it is."""
    assert d.proc is not None
    found = {d.proc.pid: "berthd"}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = read_argv(int(entry))
        if not argv:
            continue
        if os.path.basename(argv[0]) == SHIM_BINARY and argument_after(argv, "-address") \
                == d.address:
            found[int(entry)] = f"shim {argument_after(argv, '-id')}"
        elif ZYGOTE_FLAG in argv:
            found[int(entry)] = "shim zygote"
    return found


def berth_sockets(d: Berthd) -> dict[int, tuple[str, UnixSocket]]:
    """Every unix socket Berth's processes hold: inode -> (holder, socket)."""
    table = unix_table()
    held = {}
    for pid, what in berth_processes(d).items():
        for inode in socket_inodes(pid):
            if inode in table:
                held[inode] = (what, table[inode])
    return held


def private_socket_problems(path: str, mode: int = 0o600) -> list[str]:
    """How the socket file at ``path`` or a directory above it lets someone other than root
    at it ([] if none): the socket root's with exactly ``mode``; its directory root's and
    closed to others for listing and writing; every directory above it root's and not
    writable by others unless sticky (/tmp), so nobody can swap a directory on the way."""
    problems = []
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        problems.append(f"{path} is not a socket: {stat.filemode(st.st_mode)}")
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) != mode:
        problems.append(f"{path}: {stat.filemode(st.st_mode)} uid {st.st_uid}, want "
                        f"{oct(mode)} root")
    parent = Path(path).parent
    pst = os.stat(parent)
    if pst.st_uid != 0 or stat.S_IMODE(pst.st_mode) & 0o066:
        problems.append(f"{parent}: {stat.filemode(pst.st_mode)} uid {pst.st_uid}: others may "
                        "list or write the socket's directory")
    for above in parent.parents:
        ast = os.stat(above)
        if ast.st_uid != 0 or (ast.st_mode & 0o022 and not ast.st_mode & stat.S_ISVTX):
            problems.append(f"{above}: {stat.filemode(ast.st_mode)} uid {ast.st_uid}: others "
                            "may replace what is below")
    return problems


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def session(module_berthd: Berthd, busybox_image: ImageInfo) -> Iterator[Session]:
    s = Session(module_berthd, "berth", busybox_image)
    try:
        s.pull()
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def runc_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A ``--runc-binary`` that records each ``--console-socket`` it is given (the path, the
    socket's and its directories' modes, its /proc/net/unix line) and runs the real runc.
    Returns (wrapper, record)."""
    record = tmp_path / "console-sockets.txt"
    wrapper = tmp_path / "runc-wrapper"
    wrapper.write_text(f"""#!/bin/sh
prev=
for arg in "$@"; do
    if [ "$prev" = --console-socket ]; then
        {{
            echo "path $arg"
            stat -c 'sock %f %u' "$arg"
            d=$(dirname "$arg")
            while [ "$d" != / ] && [ "$d" != . ]; do
                stat -c 'dir %f %u %n' "$d"
                d=$(dirname "$d")
            done
            grep -F " $arg" /proc/net/unix | sed 's/^/unix /'
            echo end
        }} >> {record} 2>&1
    fi
    prev=$arg
done
exec {RUNC} "$@"
""")
    wrapper.chmod(0o700)
    return wrapper, record


def _with_terminal(c: Ctr, *args: str) -> None:
    """Run ``ctr ARGS`` with a pseudo-terminal as its stdio (``-t`` needs one)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.run(c.command(*args), stdin=slave, stdout=slave, stderr=slave,
                              timeout=60, check=False)
        os.close(slave)
        slave = -1
        output = b""
        os.set_blocking(master, False)
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(master, 65536):
                output += chunk
        assert proc.returncode == 0, f"ctr {' '.join(args)}: {output.decode(errors='replace')}"
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# -- tests -----------------------------------------------------------------------------------


def test_berth_listens_on_private_file_sockets_only(session: Session) -> None:
    s = session
    d = s.berthd
    cid = s.run_detached("sockets", "sleep", "1000")
    held = berth_sockets(d)
    holders = {what for what, _ in held.values()}
    assert "berthd" in holders and f"shim {cid}" in holders, \
        f"found no sockets of berthd or of the shim: {held}"
    abstract = sorted(f"{what}: {sock.name}" for what, sock in held.values()
                      if sock.name.startswith("@"))
    assert abstract == [], "Berth holds abstract unix sockets (reachable from any process " \
        f"in the host's network namespace): {abstract}"

    shim_socket = s.sockets[cid]
    assert shim_socket.startswith("/run/berth/s/"), shim_socket
    listening = {sock.name: what for what, sock in held.values() if sock.listening}
    # What must be among them: berthd's gRPC and ttrpc sockets, the task's shim.
    expected = {d.address: "berthd", d.address + ".ttrpc": "berthd", shim_socket: None}
    missing = [name for name in expected if name not in listening]
    assert missing == [], f"not listening: {missing}; Berth listens on {listening}"
    zygotes = [name for name, what in listening.items() if what == "shim zygote"]
    assert all(os.path.basename(z).startswith("zygote-") for z in zygotes), zygotes

    problems = []
    for name in listening:
        # The API socket is for a group, as containerd.sock is (0660); the rest root's only.
        problems += private_socket_problems(name, 0o660 if name == d.address else 0o600)
    assert problems == []


def _console_records(record: Path) -> list[list[str]]:
    text = record.read_text() if record.exists() else ""
    return [block.strip().splitlines() for block in text.split("end\n") if block.strip()]


def test_console_sockets_are_private_files(session: Session,
                                           runc_wrapper: tuple[Path, Path]) -> None:
    s = session
    wrapper, record = runc_wrapper
    cid = s.new_id("console")
    _with_terminal(s.c, "run", "-d", "-t", "--runc-binary", str(wrapper), s.image.ref, cid,
                   "sleep", "1000")
    s._remember_socket(cid)
    s.wait_status(cid, "RUNNING")
    _with_terminal(s.c, "tasks", "exec", "-d", "-t", "--exec-id", "tty-exec", cid,
                   "sleep", "1000")

    records = _console_records(record)
    assert len(records) == 2, f"runc was not given a console socket twice: {records}"
    for lines in records:
        path = lines[0].removeprefix("path ")
        assert path.startswith("/") and not path.startswith("@"), \
            f"the console socket is not a file-system socket: {lines}"
        fields = {line.split()[0]: line.split()[1:] for line in lines[1:]}
        sock_mode = int(fields["sock"][0], 16)
        assert stat.S_ISSOCK(sock_mode), lines
        dirs = [line.split() for line in lines if line.startswith("dir ")]
        own_dir = int(dirs[0][1], 16)
        assert dirs[0][2] == "0" and not stat.S_IMODE(own_dir) & 0o077, \
            f"the console socket's directory is open to others: {lines}"
        for _, mode_hex, uid, name in dirs[1:]:
            mode = int(mode_hex, 16)
            assert uid == "0" and (not mode & 0o022 or mode & stat.S_ISVTX), \
                f"{name} above the console socket may be replaced by others: {lines}"
        unix = [line for line in lines if line.startswith("unix ")]
        assert unix and all(line.endswith(" " + path) for line in unix), lines


@pytest.fixture
def canaries(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A listening abstract socket and a listening file-system socket of the test's own, in
    the host's network namespace: (abstract name as /proc/net/unix shows it, path)."""
    abstract_name = f"berth-test-cve-2020-15257-{uuid.uuid4().hex[:12]}"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    path = str(private / "canary.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as a, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as f:
        a.bind("\0" + abstract_name)
        a.listen(16)
        f.bind(path)
        f.listen(16)
        yield "@" + abstract_name, path


def test_host_network_container_reaches_no_berth_socket(session: Session,
                                                        canaries: tuple[str, str]) -> None:
    s = session
    d = s.berthd
    abstract_canary, file_canary = canaries
    target = s.run_detached("target", "sleep", "1000")
    before = berth_sockets(d)

    probe = s.new_id("probe")
    mounts = [arg for src, dst in PROBE_MOUNTS
              for arg in ("--mount", f"type=bind,src={src},dst={dst},options=rbind:ro")]
    result = s.c("run", "--rm", "--net-host", *mounts, s.image.ref, probe,
                 HOST_PYTHON, "-I", "-c", PROBE, timeout=120)
    tried = {entry["name"]: entry["result"] for entry in json.loads(result.stdout)}
    after = berth_sockets(d)

    # The probe works: it sees the host's table and reaches an abstract listener in it...
    assert tried.get(abstract_canary) == "connected", \
        f"the probe did not reach the abstract canary: {tried.get(abstract_canary)}"
    # ...but not a file-system socket outside its mount namespace.
    assert tried.get(file_canary) not in (None, "connected"), tried.get(file_canary)

    berth_names = {sock.name: what for what, sock in [*before.values(), *after.values()]
                   if sock.name}
    reached = sorted(f"{berth_names[name]}: {name}" for name, outcome in tried.items()
                     if name in berth_names and outcome == "connected")
    assert reached == [], f"a host-network container connected to Berth's sockets: {reached}"
    # And that was not for want of seeing them: every socket Berth listens on was tried, the
    # target task's shim among them.
    listening = {sock.name: what for what, sock in before.values() if sock.listening}
    assert f"shim {target}" in listening.values(), listening
    unseen = sorted(set(listening) - set(tried))
    assert unseen == [], f"the container did not see these Berth sockets: {unseen}"
    assert wait_until(lambda: probe not in s.c("containers", "ls", "-q").stdout.split(), 10)
