"""Which Berth shim a task joins, and when a shim may leave: part of the contract between berthd
and Berth's shim (both import it), since berthd joins a running group shim itself, without
running the shim binary's ``start``, when it can.

A shim's socket is ``/run/berth/s/<sha256 of daemon address, namespace, group key>``; tasks with
the same key share the shim serving it. The key is, in this order:

* the pod, from the ``io.containerd.runc.v2.group`` or ``io.kubernetes.cri.sandbox-id``
  annotation (as containerd's runc shim groups them). With namespace grouping a pod takes a
  namespace slot as a whole: its first task (the pod sandbox, whose id is the pod's) takes
  the first slot with room, and every other task of the pod joins the shim its sandbox's
  bundle names, so several pods share a shim and a pod is never split;
* with namespace grouping (berthd's runtime config ``shim_group = "namespace"``, its default,
  passed as ``BERTH_SHIM_GROUP=namespace`` and ``BERTH_SHIM_GROUP_SIZE``): a namespace *slot*,
  ``berth.namespace-group.<n>``, the first whose shim serves fewer than the group size. A
  task whose runtime options ask for a shim cgroup gets a shim of its own;
* otherwise the task's own id: a shim per task, as containerd runs them.

A slot's members are the namespace's bundles (the task's bundle directory's siblings) whose
``address`` file names the slot's socket. Two things keep slots consistent, both under one
lock (``flock`` on ``.shim-start.lock`` in the namespace's directory of bundles):

* ``start`` holds it from choosing a slot until the task's ``address`` is written, so
  concurrent starts never overfill a slot, and a shim about to be joined has a visible member
  the moment the lock is released;
* a shim whose last task is gone leaves (unlinks its socket) only under the lock, and only if
  no bundle names its socket but the tasks it served: a task that chose it and has yet to be
  created there keeps it (:func:`joining`); and ``delete`` removes a dead shim's socket under
  the lock, never a successor's.

Cheap to import (``start`` uses it: see berth.shim.lean).
"""

from __future__ import annotations

import os

from berth.shimcontract import (
    ADDRESS_FILE,
    DEFAULT_GROUP_SIZE,
    GROUP_BY_NAMESPACE,
    GROUP_ENV,
    GROUP_SIZE_ENV,
    SPEC_FILE,
    UNIX_SCHEME,
)

SOCKET_DIR = "/run/berth/s"
POD_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
LOCK_NAME = ".shim-start.lock"

TYPE_CHECKING = False  # typing's own costs ``start`` 8 ms
if TYPE_CHECKING:
    from types import TracebackType


def sha256_hex(data: bytes) -> str:
    """sha256 in hex, from CPython's built-in implementation where it has one (the shim's
    ``start`` should not load OpenSSL for one short digest)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
    except ImportError:
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def socket_address(daemon_address: str, namespace: str, key: str) -> str:
    digest = sha256_hex(f"{daemon_address}/{namespace}/{key}".encode())
    return f"{UNIX_SCHEME}{SOCKET_DIR}/{digest}"


def by_namespace() -> bool:
    """Whether the daemon asked for namespace grouping (in this process's environment)."""
    return os.environ.get(GROUP_ENV) == GROUP_BY_NAMESPACE


def _pod(bundle: str) -> str | None:
    """The pod the task in ``bundle`` belongs to (its annotation), or None."""
    try:
        with open(os.path.join(bundle, SPEC_FILE), "rb") as f:
            spec = f.read()
    except OSError:
        return None
    if b'"annotations"' not in spec:  # json is slow to import: only for a spec that needs it
        return None
    import json

    try:
        annotations = json.loads(spec).get("annotations") or {}
    except ValueError:
        return None
    for label in POD_LABELS:
        if annotations.get(label):
            pod = str(annotations[label])
            # One path component naming a bundle of this namespace, never another place: a
            # value like "../other-namespace/id" would join another namespace's shim. (Checked
            # by hand: ``start`` keeps out the imports berth.identifiers would bring.)
            return None if "/" in pod or "\0" in pod or pod in (".", "..") else pod
    return None


def group_address(task_id: str, bundle: str, daemon_address: str, namespace: str,
                  own_cgroup: bool, *, group_size: int | None = None) -> str:
    """The address of the shim the task in ``bundle`` joins (see the module's description).
    With namespace grouping the caller holds :class:`Lock` of the bundle's namespace
    directory. ``group_size``: namespace grouping's bound (berthd passes it; the shim's
    ``start`` reads its environment when None; 0 for no grouping)."""
    pod = _pod(bundle)
    if group_size is None:
        group_size = _group_size() if by_namespace() else 0
    grouped = group_size > 0 and not own_cgroup
    if pod is not None and grouped:
        if pod != task_id:
            try:
                with open(os.path.join(os.path.dirname(bundle), pod, ADDRESS_FILE)) as f:
                    address = f.read().strip()
                if address:
                    return address  # the shim of the pod's sandbox
            except OSError:
                pass  # no sandbox bundle: the task starts the pod's slot itself
        key = _free_slot(bundle, daemon_address, namespace, group_size)
    elif pod is not None:
        key = pod
    elif grouped:
        key = _free_slot(bundle, daemon_address, namespace, group_size)
    else:
        key = task_id
    return socket_address(daemon_address, namespace, key)


def _group_size() -> int:
    try:
        return max(1, int(os.environ.get(GROUP_SIZE_ENV, DEFAULT_GROUP_SIZE)))
    except ValueError:
        return DEFAULT_GROUP_SIZE


def _free_slot(bundle: str, daemon_address: str, namespace: str, size: int) -> str:
    """The first namespace slot with room for the task in ``bundle``."""
    members: dict[str, int] = {}
    for _name, _inode, address in _addresses(os.path.dirname(bundle), exclude=bundle):
        members[address] = members.get(address, 0) + 1
    slot = 0
    while members.get(socket_address(daemon_address, namespace, _slot_key(slot)), 0) >= size:
        slot += 1
    return _slot_key(slot)


def _slot_key(slot: int) -> str:
    return f"berth.namespace-group.{slot}"  # the namespace is part of the socket's hash


def joining(namespace_dir: str, address: str, served: dict[str, int]) -> list[str]:
    """Tasks whose bundle names ``address`` but that are not among ``served`` (task id -> its
    bundle directory's inode; an id used again has a new bundle): tasks whose ``start``
    chose this shim and whose Create has yet to come."""
    return [name for name, inode, named in _addresses(namespace_dir)
            if named == address and served.get(name) != inode]


def bundle_inode(path: str) -> int:
    """The inode of a bundle directory (-1 if it is gone), as :func:`joining` compares it."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


def _addresses(namespace_dir: str, exclude: str = "") -> list[tuple[str, int, str]]:
    """(task id, bundle inode, address) of every bundle in ``namespace_dir`` that has one."""
    out: list[tuple[str, int, str]] = []
    try:
        entries = list(os.scandir(namespace_dir))
    except OSError:
        return out
    for entry in entries:
        if entry.path == exclude or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            with open(os.path.join(entry.path, ADDRESS_FILE)) as f:
                out.append((entry.name, entry.inode(), f.read().strip()))
        except OSError:
            continue  # no address (yet), or removed meanwhile
    return out


class Lock:
    """The namespace's grouping lock (an ``flock``), taken only with namespace grouping on.
    ``blocking=False``: :attr:`held` says whether it was had at once (an event loop must not
    wait on it)."""

    def __init__(self, namespace_dir: str, *, blocking: bool = True,
                 enabled: bool | None = None) -> None:
        """``enabled``: whether grouping is on (None: from this process's environment)."""
        self._path = os.path.join(namespace_dir, LOCK_NAME)
        self._blocking = blocking
        self._enabled = by_namespace() if enabled is None else enabled
        self._fd = -1
        self.held = False

    def __enter__(self) -> Lock:
        if not self._enabled:
            self.held = True  # nothing to serialise
            return self
        import fcntl

        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self._blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return self
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.held = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # and with it the lock
            self._fd = -1
        self.held = False
