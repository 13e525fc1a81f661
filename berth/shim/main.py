"""``containerd-shim-berth-v2``: the command line a runtime v2 daemon runs, and the shim's life.

The daemon (containerd, berthd) runs the binary in the task's bundle directory as::

    containerd-shim-berth-v2 -namespace NS -address DAEMON_GRPC -publish-binary DAEMON -id ID start
    containerd-shim-berth-v2 -namespace NS -address DAEMON_GRPC -publish-binary DAEMON \
        -id ID -bundle BUNDLE delete

with ``TTRPC_ADDRESS`` (where events go) in the environment. (The contract's names, which berthd
uses too, are berth.shimcontract's.)

``start`` binds the shim's socket and starts the long-lived shim process on it (a new session,
the bundle as working directory, stdin/stdout on /dev/null, stderr on the bundle's ``log`` FIFO
-- opened read-write, so that neither opening nor writing can block on a reader -- when there
is one), writes the bundle's ``address`` file and prints the address
(``unix:///run/berth/s/<sha256>``). The shim is forked by the zygote (berth.shim.zygote),
started if need be; ``BERTH_SHIM_ZYGOTE=off``, or any trouble with it, starts a new interpreter
instead. Which shim a task joins -- a pod's, one of its namespace's shared shims, or its own --
is berth.shimgroups's business; when a shim already serves the chosen socket, ``start``
prints its address and starts nothing. berthd and containerd never share a shim. Runtime
options (protobuf ``Any``) may come on stdin: a ``shim_cgroup`` there moves the shim into that
cgroup, and gives the task a shim of its own.

``delete`` cleans up after a shim that died: ``runc delete --force``, rootfs unmounted, its
socket removed, and a ``DeleteResponse`` (exit status 137, as for SIGKILL) as protobuf on
stdout. containerd runs it after every shim's exit, so it does only what is left to do.

Runtime state: ``runc --root`` is the options' ``root`` (or ``/run/berth/runc``) plus the
namespace -- Berth's own tree, never the Go shim's ``/run/containerd/runc``.

The shim process itself (this same program, run with the flags and no action) serves
``containerd.task.v2.Task`` over ttrpc on the inherited socket (fd 3) until Shutdown finds no
task left, or SIGTERM. It is a child subreaper, so container processes are its children.
"""

from __future__ import annotations

# Only what ``start`` needs, and only cheap modules (see berth.shim.lean): ``start`` runs on
# the path of every container start.
import os
import sys
import time

from berth import shimcontract as contract
from berth.shim.cmdline import Flags, UsageError, parse_flags
from berth.shimgroups import SOCKET_DIR, Lock
from berth.shimlaunch import can_connect
from berth.shimlaunch import start as start_shim

VERSION = "berth shim v2"


def _read_start_options() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    try:
        return sys.stdin.buffer.read()
    except OSError:
        return b""


def _shim_cgroup(data: bytes) -> str:
    """The ``shim_cgroup`` of the runtime options ``start`` got on stdin, if any."""
    if not data:
        return ""
    from google.protobuf import any_pb2

    options = any_pb2.Any.FromString(data)
    if options.type_url.rsplit("/", 1)[-1] != "containerd.runc.v1.Options":
        return ""
    from berth.api.runtime.runc.options import oci_pb2

    return str(oci_pb2.Options.FromString(options.value).shim_cgroup)


def start(flags: Flags) -> int:
    from berth.spawn import close_on_exec_all

    close_on_exec_all()
    options = _read_start_options()
    address, _started = start_shim(flags.id, flags.namespace, flags.address, os.getcwd(),
                                   os.environ, debug=flags.debug,
                                   shim_cgroup=_shim_cgroup(options))
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _remove_dead_socket(bundle: str) -> None:
    """The socket a killed shim left (named in the bundle's ``address``), if nobody serves it:
    in a group another task may still be served there. Under the grouping lock, so that a
    socket a new shim has bound but not yet listens on is never taken for a dead one."""
    try:
        with open(os.path.join(bundle, contract.ADDRESS_FILE)) as f:
            path = f.read().strip().removeprefix(contract.UNIX_SCHEME)
    except OSError:
        return
    with Lock(os.path.dirname(os.path.abspath(bundle))):
        if path.startswith(SOCKET_DIR + "/") and not can_connect(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return  # removed meanwhile: what we wanted


def delete(flags: Flags) -> int:
    """Clean up after a dead shim. Every task's end passes here (containerd runs it once the
    shim hung up), so it only does what is left to do: in the usual case nothing is."""

    from berth.shim.options import RuntimeOptions

    bundle = flags.bundle or os.getcwd()
    runc = RuntimeOptions.load(bundle).runc(bundle, flags.namespace)
    if os.path.exists(os.path.join(runc.root, flags.id)):  # runc still knows the container
        problem = runc.delete_now(flags.id, force=True)
        if problem and "does not exist" not in problem:
            print(f"runc delete {flags.id}: {problem}", file=sys.stderr)
    rootfs = os.path.join(bundle, contract.ROOTFS_DIR)
    if _is_mount_point(rootfs):
        from berth.mount import unmount

        try:
            unmount(rootfs)
        except Exception as err:
            print(f"unmount {rootfs}: {err}", file=sys.stderr)
    _remove_dead_socket(bundle)
    pid = 0
    try:
        with open(os.path.join(bundle, "init.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pass
    now = time.time_ns()
    sys.stdout.buffer.write(encode_delete_response(pid, contract.DEAD_EXIT_STATUS, now // 10**9,
                                                   now % 10**9))
    sys.stdout.flush()
    return 0


def _is_mount_point(path: str) -> bool:
    """Whether something is mounted on ``path`` (per mountinfo: a bind mount from the same
    filesystem has the same device, so os.path.ismount misses it)."""
    target = os.path.realpath(path).encode()
    with open("/proc/self/mountinfo", "rb") as f:
        # mount points are octal-escaped there; ours never need escaping unless the bundle
        # path has spaces, in which case we err on the side of unmounting
        return any(line.split()[4] == target for line in f) or b" " in target


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, seconds: int, nanos: int) -> bytes:
    """A serialized ``containerd.task.v2.DeleteResponse`` {1: pid, 2: exit_status, 3:
    exited_at {1: seconds, 2: nanos}}, written by hand: loading protobuf would cost the delete
    action 15 ms. (tests/test_shim.py checks it against the generated message.)"""
    stamp = b"".join(_varint(tag) + _varint(v) for tag, v in ((0x08, seconds), (0x10, nanos))
                     if v)
    out = b"".join(_varint(tag) + _varint(v) for tag, v in ((0x08, pid), (0x10, exit_status))
                   if v)
    return out + b"\x1a" + _varint(len(stamp)) + stamp


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags = parse_flags(argv)
    except UsageError as err:
        print(f"containerd-shim-berth-v2: {err}", file=sys.stderr)
        return 2
    if flags.version:
        print(f"{os.path.basename(sys.argv[0])}:\n  Version:  {VERSION}\n")
        return 0
    if not flags.namespace:
        print("containerd-shim-berth-v2: shim namespace cannot be empty", file=sys.stderr)
        return 1
    try:
        if flags.action == contract.ACTION_START:
            return start(flags)
        if flags.action == contract.ACTION_DELETE:
            return delete(flags)
        if flags.action:
            print(f"containerd-shim-berth-v2: unknown action {flags.action!r}", file=sys.stderr)
            return 1
        return serve_main(argv)
    except Exception as err:  # a daemon shows our stderr (start: our output) to its user
        print(f"containerd-shim-berth-v2: {flags.action or 'serve'}: {err}", file=sys.stderr)
        return 1


def serve_main(argv: list[str]) -> int:
    """The shim process (serve until shut down), or the zygote that forks them."""
    from berth.shim import lean, zygote

    if argv and argv[0] == zygote.ZYGOTE_FLAG:
        return zygote.serve_forever(argv[1])
    lean.block_ssl()
    from berth.shim.server import serve

    flags = parse_flags(argv)
    return serve(flags.namespace, flags.id, debug=flags.debug)
