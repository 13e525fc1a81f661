"""Network namespaces that berthd creates and pins for pod sandboxes, as containerd 1.6's CRI does
(its ``pkg/netns``).

A pinned namespace is a file ``cni-<uuid4>`` under a base directory (default ``/var/run/netns``,
where ``ip netns`` looks too) with the namespace bind-mounted onto it, so that it lives on with no
process inside it. The base directory is made a shared mount (bind-mounted onto itself first if
it is not a mount point, as iproute2 does), so that a namespace's mount, and its unmount,
propagate into mount namespaces created from this one.

Python 3.11 has no ``os.unshare``/``os.setns``: both are called through libc in a dedicated,
short-lived thread. Namespaces are per thread in Linux, so the thread that unshares or enters a
namespace is the only one that changes, and it exits right after; the calling thread (and every
other) stays where it was. A socket made inside :meth:`NetNS.run` stays bound to the pod's
namespace after the thread is gone, which is how a port-forward dials ``localhost`` in a pod.

Contract:

* :meth:`NetNS.create` either returns a pinned namespace or leaves nothing behind (no file, no
  mount) and raises.
* :meth:`NetNS.remove` unmounts (lazily, ``MNT_DETACH``) and unlinks; it is idempotent: a file
  already gone, or already unmounted, is fine.
* :meth:`NetNS.pinned` says whether the path still holds a network namespace.
* Errors are :mod:`berth.errdefs` errors naming the path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

from berth import errdefs
from berth.mount import MNT_DETACH, MS_BIND, MS_REC, MS_SHARED

log = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "/var/run/netns"
NAME_PREFIX = "cni-"

CLONE_NEWNET = 0x40000000
UMOUNT_NOFOLLOW = 0x8
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type (Linux 4.11)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

T = TypeVar("T")


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    rc = _libc.mount(source.encode() if source is not None else None, target.encode(),
                     fstype.encode() if fstype is not None else None, flags, None)
    if rc != 0:
        raise _oserror(f"mount {source or 'none'} on {target}")


def _umount(target: str) -> bool:
    """Detach the top mount on ``target``; False when there is none (not mounted, or gone)."""
    if _libc.umount2(target.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def _in_own_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` in a new thread that ends when it returns; its result, or its exception."""
    returned: list[T] = []
    raised: list[BaseException] = []

    def target() -> None:
        try:
            returned.append(fn())
        except BaseException as e:  # handed to the calling thread, which re-raises it
            raised.append(e)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]
    if not returned:
        raise errdefs.Internal(f"{name}: the namespace thread ended without an answer")
    return returned[0]


def _nsfs_device() -> int:
    # Every namespace file lives on the one internal nsfs mount: they all share its st_dev.
    return os.stat("/proc/self/ns/net").st_dev


def is_netns(path: str) -> bool:
    """Whether ``path`` is a network namespace file (a pinned one, or ``/proc/PID/ns/net``)."""
    try:
        if os.stat(path).st_dev != _nsfs_device():
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise errdefs.Internal(f"cannot inspect network namespace {path}: {e}") from e
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError as e:
        raise errdefs.Internal(f"cannot inspect network namespace {path}: {e}") from e
    finally:
        os.close(fd)


def make_shared(base_dir: str) -> None:
    """Make ``base_dir`` a shared mount (MS_SHARED|MS_REC), bind-mounting it onto itself first
    when it is not a mount point (iproute2's ``ip netns add`` does the same). Cheap and
    idempotent: the bind happens once, later calls only re-assert the propagation."""
    try:
        _mount(None, base_dir, None, MS_SHARED | MS_REC)
        return
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise errdefs.Internal(f"cannot make {base_dir} a shared mount: {e.strerror}") from e
    try:
        _mount(base_dir, base_dir, None, MS_BIND | MS_REC)
        _mount(None, base_dir, None, MS_SHARED | MS_REC)
    except OSError as e:
        raise errdefs.Internal(f"cannot make {base_dir} a shared mount: {e.strerror}") from e
    log.info("bind-mounted %s onto itself as a shared mount for network namespaces", base_dir)


class NetNS:
    """A network namespace pinned at :attr:`path` (see the module's contract)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"NetNS({self.path!r})"

    @classmethod
    def create(cls, base_dir: str = DEFAULT_BASE_DIR) -> NetNS:
        """A new, empty network namespace (only a down ``lo``) pinned at
        ``<base_dir>/cni-<uuid4>``. On failure nothing is left behind."""
        base_dir = os.path.abspath(base_dir)
        try:
            os.makedirs(base_dir, mode=0o755, exist_ok=True)
        except OSError as e:
            raise errdefs.Internal(f"cannot create netns directory {base_dir}: {e}") from e
        make_shared(base_dir)
        path = os.path.join(base_dir, f"{NAME_PREFIX}{uuid.uuid4()}")
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        except OSError as e:
            raise errdefs.Internal(f"cannot create netns mount point {path}: {e}") from e
        ns = cls(path)
        try:
            _in_own_thread(lambda: _unshare_and_pin(path), "berth-netns-create")
            if not ns.pinned():
                raise errdefs.Internal(f"netns {path} is not pinned after its bind mount")
        except BaseException as e:
            try:
                ns.remove()
            except errdefs.BerthError as cleanup:
                log.error("cleaning up half-created netns %s: %s", path, cleanup)
            if isinstance(e, OSError):
                raise errdefs.Internal(f"cannot create network namespace {path}: "
                                       f"{e.strerror}") from e
            raise
        log.debug("created network namespace %s", path)
        return ns

    @classmethod
    def load(cls, path: str) -> NetNS:
        """The namespace pinned at ``path`` (not checked: see :meth:`pinned`), as containerd's
        ``LoadNetNS``, so that a namespace found in a record can be removed whatever its
        state."""
        return cls(path)

    def pinned(self) -> bool:
        """Whether :attr:`path` still holds a network namespace."""
        return is_netns(self.path)

    def remove(self) -> None:
        """Unmount (lazily) and unlink. Idempotent."""
        try:
            for _ in range(16):  # a namespace mounted more than once: take every layer off
                if not _umount(self.path):
                    break
        except OSError as e:
            raise errdefs.Internal(f"cannot unmount network namespace {self.path}: "
                                   f"{e.strerror}") from e
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise errdefs.Internal(f"cannot remove network namespace {self.path}: {e}") from e
        log.debug("removed network namespace %s", self.path)

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` in a fresh thread that entered this namespace, and return what it
        returns (or raise what it raises). The calling thread's namespace never changes."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise errdefs.NotFound(f"network namespace {self.path} does not exist") from e
        except OSError as e:
            raise errdefs.Internal(f"cannot open network namespace {self.path}: {e}") from e

        def enter_and_call() -> T:
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    if err == errno.EINVAL:
                        raise errdefs.FailedPrecondition(
                            f"{self.path} is not a network namespace (not pinned, or removed)")
                    raise errdefs.Internal(f"cannot enter network namespace {self.path}: "
                                           f"{os.strerror(err)}")
            finally:
                os.close(fd)
            return fn()

        return _in_own_thread(enter_and_call, "berth-netns-run")


def _unshare_and_pin(path: str) -> None:
    """In the calling (dedicated) thread: a new network namespace, bind-mounted on ``path``."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise _oserror("unshare(CLONE_NEWNET)")
    _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, None, MS_BIND)
