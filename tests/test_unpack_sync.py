"""Each layer's files are synced to disk before the snapshot that holds them is committed.

A commit is durable (the snapshotter's database syncs it): were the layer's files still only in
the page cache, a power loss would leave a committed layer with empty or missing files under a
chain ID that says it is complete. The differ runs syncfs(2) once per layer after applying it,
whoever asked: the Unpacker (in the extracting worker for the parallel strategy, before its
commit), or a client's Diff.Apply, as ``ctr images pull`` sends before it commits.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import namespaces
from berth.content.local import LocalStore
from berth.diff import WalkingDiff, durable
from berth.events import Exchange
from berth.metadata.store import Metadata
from berth.oci.image import MEDIA_TYPE_LAYER, Descriptor
from berth.snapshots.overlay import OverlaySnapshotter
from berth.transfer import unpack
from berth.transfer.unpack import Unpacker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay, lchown)")


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A layer of the given files (bytes) and directories (None), exactly these entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o750
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LAYERS = [
    _tar([("etc", None), ("etc/one", b"first layer\n")]),
    # "etc/" is not in this layer: extracted ahead of its parent, it is made and adopted later.
    _tar([("etc/two", b"second layer\n")]),
]


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    with namespaces.use("sync-test"):
        backend = OverlaySnapshotter(str(tmp_path / "overlayfs"))
        meta = Metadata(str(tmp_path / "meta"), LocalStore(str(tmp_path / "content")),
                        {"overlayfs": backend}, Exchange())
        try:
            yield meta
        finally:
            backend.close()
            meta.close()


def _store(md: Metadata) -> tuple[list[Descriptor], list[str]]:
    descs, diff_ids = [], []
    for i, data in enumerate(LAYERS):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        w = md.content.writer(f"layer-{i}", total=len(data))
        try:
            w.write(data)
            w.commit(len(data), digest)
        finally:
            w.close()
        descs.append(Descriptor(MEDIA_TYPE_LAYER, digest, len(data)))
        diff_ids.append(digest)
    return descs, diff_ids


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_each_layer_is_synced_before_its_commit(md: Metadata, parallel: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []

    def sync(directory: str) -> None:
        # What is on disk when the sync runs: the layer's own file must be there already.
        names = sorted(p.name for p in Path(directory).rglob("*") if p.is_file())
        events.append(("sync", ",".join(names)))

    fsynced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable, "sync_filesystem", sync)
    monkeypatch.setattr(unpack.os, "fsync", fsync)
    sn = md.snapshotters["overlayfs"]
    real_commit = sn.commit

    def commit(name: str, key: str, *args: object, **kwargs: object) -> None:
        events.append(("commit", name))
        real_commit(name, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sn, "commit", commit)
    descs, diff_ids = _store(md)
    u = Unpacker(md.content, sn, WalkingDiff(), descs, diff_ids, parallel=parallel)
    for i in range(len(LAYERS)):
        u.extract(i)
    for i in range(len(LAYERS)):
        u.commit(i)

    assert events == [("sync", "one"), ("sync", "two"), ("commit", u.chain[0]),
                      ("commit", u.chain[1])] if parallel else [
        ("sync", "one"), ("commit", u.chain[0]), ("sync", "two"), ("commit", u.chain[1])]
    if parallel:  # the directory the second layer made took its parent's metadata: synced too
        assert [p for p in fsynced if p.endswith("/fs/etc")], fsynced
    assert sn.stat(u.top).kind.name == "COMMITTED"


def test_sync_can_be_turned_off(md: Metadata, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(durable, "sync_filesystem", calls.append)
    descs, diff_ids = _store(md)
    u = Unpacker(md.content, md.snapshotters["overlayfs"], WalkingDiff(sync=False), descs,
                 diff_ids)
    for i in range(len(LAYERS)):
        u.extract(i)
    for i in range(len(LAYERS)):
        u.commit(i)
    assert calls == []


def test_diff_apply_syncs_before_it_returns(md: Metadata, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``ctr images pull`` applies each layer through the Diff service, then commits."""
    from berth.diff.local import LocalDiff
    from berth.mount import Mount

    synced: list[list[str]] = []
    monkeypatch.setattr(durable, "sync_filesystem", lambda d: synced.append(
        sorted(p.name for p in Path(d).rglob("*") if p.is_file())))
    descs, _ = _store(md)
    target = tmp_path / "target"
    target.mkdir()
    LocalDiff(WalkingDiff(), md.content).apply(
        descs[0], [Mount("bind", str(target), ("rbind", "rw"))])
    assert synced == [["one"]]


def test_sync_filesystem_runs_syncfs(tmp_path: Path) -> None:
    durable.sync_filesystem(str(tmp_path))  # the real call: no error on a real directory
    with pytest.raises(FileNotFoundError):
        durable.sync_filesystem(str(tmp_path / "missing"))
