"""The lifecycle shared by snapshotters that keep snapshot ``<id>`` in ``<root>/snapshots/<id>``.

Overlay and native add only the directory layout and the mounts; the rows live in the
snapshotter's own database (:mod:`berth.snapshots.storage`), and every filesystem step here runs
inside the transaction that records it.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence

from berth import errdefs, fsmode
from berth.mount import Mount
from berth.snapshots.snapshotter import Info, Kind, Snapshotter, Usage
from berth.snapshots.storage import UNMEASURED, MetaStore, Snapshot

log = logging.getLogger(__name__)


def place_directory(tmp: str, final: str) -> None:
    """Rename the prepared directory ``tmp`` to ``final`` and make the rename durable.

    Call inside the write transaction that created ``final``'s id. A directory already at
    ``final`` can only be the leftover of a transaction that rolled back after its rename (the
    id was handed out again), so it is removed first.
    """
    try:
        os.rename(tmp, final)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(final)
        os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (renames, creations) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_usage(root: str) -> Usage:
    """The space and inodes used under ``root`` (itself included), each inode counted once.

    What containerd's ``fs.DiskUsage`` reports: ``st_blocks * 512`` per distinct inode. Entries
    that vanish during the walk (a container deleting files) simply do not count; a missing
    ``root`` is NotFound.
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise errdefs.NotFound(f"{root} does not exist") from None
    seen = {(st.st_dev, st.st_ino)}
    size = st.st_blocks * 512
    pending = [root] if stat.S_ISDIR(st.st_mode) else []
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return Usage(size=size, inodes=len(seen))


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Turn an OSError from the block into errdefs.Internal naming ``what`` failed."""
    try:
        yield
    except OSError as err:
        raise errdefs.Internal(f"{what}: {err}") from err


def _discard(path: str, cause: BaseException) -> None:
    # Undo a half-done step while ``cause`` propagates; if even that fails, say so on ``cause``
    # rather than hide it: cleanup() will remove the directory later.
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        cause.add_note(f"could not remove {path} ({err}); cleanup() will retry")


class LocalSnapshotter(Snapshotter):
    """The lifecycle of snapshotters that keep snapshot ``<id>`` in ``<root>/snapshots/<id>``.

    Subclasses fill a new directory (:meth:`_populate`), say how to mount a snapshot
    (:meth:`_mounts`) and which directory holds a snapshot's own data (:meth:`_data_dir`).

    Crash safety: a new directory is built as ``snapshots/new-*`` and renamed to its id inside
    the transaction that records it; a removal renames ``<id>`` to ``rm-<id>`` inside the
    transaction that deletes the row, then deletes it after the commit. After a crash, anything
    under ``snapshots/`` that is not a live id is a leftover, which :meth:`cleanup` deletes, except
    ``rm-<id>`` whose row still exists (a removal that never committed), which it puts back.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._snapshots_dir = os.path.join(self.root, "snapshots")
        with os_errors(f"cannot create snapshotter root {self.root}"):
            # Both 0700, restricted if older: the snapshots hold the images' files, setuid
            # binaries among them, and only root may reach them (see berth.fsmode).
            fsmode.private_dir(self.root)
            fsmode.private_dir(self._snapshots_dir)
        self._ms = MetaStore(os.path.join(self.root, "metadata.db"))
        # rm- directories being deleted outside the store's lock: cleanup() leaves them alone.
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    @abc.abstractmethod
    def _populate(self, directory: str, snapshot: Snapshot) -> None:
        """Fill the new, empty ``directory`` for ``snapshot``; runs inside its transaction."""

    @abc.abstractmethod
    def _mounts(self, snapshot: Snapshot) -> list[Mount]: ...

    @abc.abstractmethod
    def _data_dir(self, snapshot_id: int) -> str:
        """The directory whose usage is the snapshot's own."""

    def _dir(self, snapshot_id: int) -> str:
        return os.path.join(self._snapshots_dir, str(snapshot_id))

    def stat(self, key: str) -> Info:
        with self._ms.transaction() as tx:
            return tx.get_info(key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self._ms.transaction(write=True) as tx:
            return tx.update_info(info, fieldpaths)

    def usage(self, key: str) -> Usage:
        with self._ms.transaction() as tx:
            snapshot_id, info, usage = tx.get_info(key)
        if info.kind == Kind.ACTIVE or (info.kind == Kind.COMMITTED and usage == UNMEASURED):
            # Walked outside the transaction: other snapshots need not wait for it.
            with os_errors(f"cannot measure snapshot {key!r}"):
                usage = disk_usage(self._data_dir(snapshot_id))
            if info.kind == Kind.COMMITTED:
                with self._ms.transaction(write=True) as tx:
                    tx.set_usage(snapshot_id, usage)
        return usage

    def mounts(self, key: str) -> list[Mount]:
        with self._ms.transaction() as tx:
            return self._mounts(tx.get_snapshot(key))

    def prepare(self, key: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str,
                labels: dict[str, str] | None) -> list[Mount]:
        tmp = final = ""
        try:
            # The temporary directory is made inside the transaction so that cleanup(), which
            # holds the same lock while it scans, never sees it half built.
            with self._ms.transaction(write=True) as tx, os_errors(f"cannot prepare {key!r}"):
                tmp = tempfile.mkdtemp(prefix="new-", dir=self._snapshots_dir)
                snapshot = tx.create(kind, key, parent, labels)
                self._populate(tmp, snapshot)
                final = self._dir(snapshot.id)
                place_directory(tmp, final)
                tmp = ""
        except BaseException as err:
            # Either the row was never committed or it rolled back: its directory must go too.
            for leftover in (tmp, final):
                if leftover:
                    _discard(leftover, err)
            raise
        return self._mounts(snapshot)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        with self._ms.transaction(write=True) as tx:
            tx.commit(key, name, UNMEASURED, labels)

    def remove(self, key: str) -> None:
        """Remove ``key``; its disk space is freed before returning when possible.

        Once the removal is committed it is not reported as failed: a directory that cannot
        be deleted (say, something is still mounted in it) is logged and left to cleanup().
        """
        retired = ""
        snapshot_id = 0
        try:
            with self._ms.transaction(write=True) as tx, os_errors(f"cannot remove {key!r}"):
                snapshot_id, _ = tx.remove(key)
                retired = self._retire(snapshot_id)
        except BaseException as err:
            if retired:
                self._unretire(retired, snapshot_id, err)
            raise
        if retired:
            try:
                shutil.rmtree(retired)
            except OSError as err:
                log.warning("snapshot %r removed, but not its directory %s (%s); "
                            "cleanup() will retry", key, retired, err)
            finally:
                with self._busy_lock:
                    self._busy.discard(os.path.basename(retired))

    def _retire(self, snapshot_id: int) -> str:
        # Runs inside the removing transaction, so cleanup() cannot see rm-<id> before it is
        # marked busy.
        retired = os.path.join(self._snapshots_dir, f"rm-{snapshot_id}")
        try:
            os.rename(self._dir(snapshot_id), retired)
        except FileNotFoundError:
            return ""  # no directory: an interrupted earlier removal already took it
        with self._busy_lock:
            self._busy.add(os.path.basename(retired))
        return retired

    def _unretire(self, retired: str, snapshot_id: int, cause: BaseException) -> None:
        try:
            os.rename(retired, self._dir(snapshot_id))
        except OSError as err:
            cause.add_note(f"could not restore {retired} ({err}); cleanup() will")
        finally:
            with self._busy_lock:
                self._busy.discard(os.path.basename(retired))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        # Read everything first: the caller's loop body must not run under the store's lock.
        with self._ms.transaction() as tx:
            return iter(tx.walk(filters))

    def cleanup(self) -> None:
        doomed: list[str] = []
        with self._ms.transaction(write=True) as tx, os_errors("snapshot cleanup"):
            live = tx.ids()
            with self._busy_lock:
                busy = set(self._busy)
            for name in sorted(os.listdir(self._snapshots_dir)):
                if name in busy or (name.isdigit() and int(name) in live):
                    continue
                path = os.path.join(self._snapshots_dir, name)
                restore = name.removeprefix("rm-")
                if (name.startswith("rm-") and restore.isdigit() and int(restore) in live
                        and not os.path.lexists(self._dir(int(restore)))):
                    os.rename(path, self._dir(int(restore)))
                    continue
                doomed.append(name)
            with self._busy_lock:
                self._busy.update(doomed)
        failures = []
        for name in doomed:
            path = os.path.join(self._snapshots_dir, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                failures.append(f"{path}: {err}")
            finally:
                with self._busy_lock:
                    self._busy.discard(name)
        if failures:
            raise errdefs.Internal("snapshot cleanup left: " + "; ".join(failures))

    def close(self) -> None:
        self._ms.close()
