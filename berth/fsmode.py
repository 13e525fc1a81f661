"""Who may look into what berthd keeps on disk.

Everything under berthd's root and state belongs to root alone: the metadata database and the
task bundles hold containers' specs (their environment, so their secrets), and the snapshots
and a running task's rootfs hold image files, setuid binaries among them. A directory another
user can traverse lets that user read such a file by its (guessable) path, or run such a binary
(CVE-2021-41103, fixed in containerd 1.4.11/1.5.7). The modes, as containerd 1.6 uses them:

* ``0700`` (:data:`PRIVATE`): the root and what is in it (content store, snapshotters, metadata,
  temporary mounts), and a task's bundle;
* ``0711`` (:data:`TRAVERSABLE`): the state directory and the runtime's directories between it
  and the bundles, so that a bundle whose owner group is a user namespace's root can be reached
  (the bundle itself is ``0710`` then; nothing above it can be listed);
* ``0600`` (:data:`PRIVATE_FILE`): files holding secrets (``config.json``, the databases).

Creating with the right mode is not enough: a root made by an older Berth keeps its old modes,
so each owner also *restricts* its directories when it starts (clearing the bits the mode does
not allow, never adding any, so an operator's stricter choice stays).
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "PRIVATE",
    "PRIVATE_FILE",
    "TRAVERSABLE",
    "private_database",
    "private_dir",
    "restrict",
]

PRIVATE = 0o700
TRAVERSABLE = 0o711
PRIVATE_FILE = 0o600


def restrict(path: str, mode: int) -> None:
    """Clear the permission bits of ``path`` that ``mode`` does not allow (following a
    symlink, as an operator may have linked the root elsewhere). A missing path is left
    missing."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if current & ~mode & 0o7777:
        os.chmod(path, current & mode)


def private_dir(path: str, mode: int = PRIVATE) -> str:
    """Make the directory ``path`` (and missing parents, with the default mode) and restrict it
    to ``mode``, whether it was just made (the umask may have left bits out, never in) or is
    older; returns ``path``."""
    os.makedirs(path, mode=mode, exist_ok=True)
    restrict(path, mode)
    return path


def private_database(path: str) -> str:
    """Make the SQLite database file ``path`` 0600 before SQLite opens it: created empty with
    that mode if missing (SQLite would make it 0644, and an empty file is a new database to
    it), else restricted, with its ``-wal`` and ``-shm`` files. SQLite gives the ``-wal`` and
    ``-shm`` files it creates the database file's own mode. Returns ``path``."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
    for name in (path, path + "-wal", path + "-shm"):
        restrict(name, PRIVATE_FILE)
    return path
