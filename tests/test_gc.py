"""Garbage collection over the metadata database, as containerd's collector does it: mark from
images, leases and ``containerd.io/gc.root`` along reference labels and snapshot parents, then
sweep rows, backend snapshots and blobs on disk."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from content_conformance import digest_of

from berth import errdefs, leases, namespaces
from berth.content.content import Info
from berth.content.local import LocalStore
from berth.events import Exchange
from berth.gc import Scheduler
from berth.images import Image
from berth.leases import Resource
from berth.metadata.gc import Stats
from berth.metadata.snapshots import NamespacedSnapshotter
from berth.metadata.store import Metadata
from berth.oci.image import Descriptor
from berth.snapshots.overlay import OverlaySnapshotter
from berth.snapshots.snapshotter import Info as SnapshotInfo
from berth.snapshots.snapshotter import Kind, Snapshotter

NS = "gc-test"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_CONTENT = "containerd.io/gc.ref.content"
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.overlayfs"
ROOT = "containerd.io/gc.root"
EXPIRE = "containerd.io/gc.expire"
FLAT = "containerd.io/gc.flat"


@pytest.fixture(autouse=True)
def namespace() -> Iterator[str]:
    with namespaces.use(NS):
        yield NS


class Daemon:
    """A Metadata over a local content store and an overlay snapshotter under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.local = LocalStore(str(root / "content"))
        self.backend = OverlaySnapshotter(str(root / "overlayfs"))
        self.meta = Metadata(str(root / "meta"), self.local, {"overlayfs": self.backend},
                             Exchange())
        self.snapshots: NamespacedSnapshotter = self.meta.snapshotters["overlayfs"]

    def collect(self) -> Stats:
        return self.meta.collector.collect()

    # What exists, at each level.

    def rows(self) -> set[str]:
        """The blobs this namespace records."""
        return {i.digest for i in self.meta.content.walk()}

    def disk(self) -> set[str]:
        return {i.digest for i in self.local.walk()}

    def snapshot_names(self) -> set[str]:
        return {i.name for i in self.snapshots.walk()}

    def backend_keys(self) -> set[str]:
        return {i.name for i in self.backend.walk()}

    def snapshot_dirs(self) -> list[str]:
        return sorted(os.listdir(self.root / "overlayfs" / "snapshots"))

    def close(self) -> None:
        self.backend.close()
        self.meta.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.close()


def put(d: Daemon, data: bytes, labels: dict[str, str] | None = None) -> str:
    """Commit ``data`` in the current namespace (a no-op if it is already recorded here)."""
    digest = digest_of(data)
    w = d.meta.content.writer(f"put-{digest}", total=len(data))
    try:
        w.write(data)
        w.commit(len(data), digest, labels)
    except errdefs.AlreadyExists:
        pass
    finally:
        w.close()
    return digest


def committed(d: Daemon, name: str, parent: str = "",
              labels: dict[str, str] | None = None) -> str:
    d.snapshots.prepare(f"extract-{name}", parent)
    d.snapshots.commit(name, f"extract-{name}", labels)
    return name


@dataclass
class Pulled:
    manifest: str
    config: str
    layers: list[str]
    chain: list[str]  # snapshot names, the base first


def pull(d: Daemon, name: str, layers: list[bytes]) -> Pulled:
    """What a pull and unpack leave: layer blobs, a snapshot chain, a config naming its top
    snapshot, a manifest naming config and layers, and the image naming the manifest."""
    digests = [put(d, data) for data in layers]
    chain: list[str] = []
    for digest in digests:
        chain_id = digest_of(f"{chain[-1] if chain else ''} {digest}".encode())
        try:
            d.snapshots.stat(chain_id)
        except errdefs.NotFound:
            committed(d, chain_id, chain[-1] if chain else "")
        chain.append(chain_id)
    config = put(d, f"config of {name}".encode(), {REF_SNAPSHOT: chain[-1]})
    manifest = put(d, f"manifest of {name}".encode(), {
        f"{REF_CONTENT}.config": config,
        **{f"{REF_CONTENT}.l.{i}": digest for i, digest in enumerate(digests)},
    })
    d.meta.images.create(Image(name, Descriptor(MANIFEST, manifest, 0)))
    return Pulled(manifest, config, digests, chain)


def blobs_of(p: Pulled) -> set[str]:
    return {p.manifest, p.config, *p.layers}


# --- marking from images ----------------------------------------------------------------------


def test_collect_keeps_what_images_reach_and_removes_the_rest(daemon: Daemon) -> None:
    image = pull(daemon, "a", [b"layer one", b"layer two"])
    stray_blob = put(daemon, b"nobody refers to me")
    committed(daemon, "stray")
    daemon.snapshots.prepare("stray-work", "stray")
    assert len(daemon.snapshot_dirs()) == 4

    stats = daemon.collect()
    assert (stats.leases, stats.content, stats.blobs) == (0, 1, 1)
    assert (stats.snapshots, stats.backend_snapshots) == (2, 2)
    assert daemon.rows() == daemon.disk() == blobs_of(image)
    assert stray_blob not in daemon.disk()
    assert daemon.snapshot_names() == set(image.chain)
    assert len(daemon.backend_keys()) == len(daemon.snapshot_dirs()) == 2

    again = daemon.collect()
    assert (again.leases, again.content, again.blobs, again.snapshots,
            again.backend_snapshots) == (0, 0, 0, 0, 0)


def test_deleting_an_image_removes_exactly_what_only_it_reached(daemon: Daemon) -> None:
    a = pull(daemon, "a", [b"base layer", b"a's layer"])
    b = pull(daemon, "b", [b"base layer", b"b's layer"])
    assert a.chain[0] == b.chain[0] and a.layers[0] == b.layers[0]

    daemon.meta.images.delete("a")  # no scheduler and no sync: nothing collected yet
    assert daemon.rows() == daemon.disk() == blobs_of(a) | blobs_of(b)

    stats = daemon.collect()
    assert (stats.content, stats.blobs, stats.snapshots) == (3, 3, 1)
    assert daemon.rows() == daemon.disk() == blobs_of(b)
    assert daemon.snapshot_names() == set(b.chain)
    assert len(daemon.backend_keys()) == len(daemon.snapshot_dirs()) == 2

    daemon.meta.images.delete("b", sync=True)  # collected before it returns
    assert daemon.rows() == daemon.disk() == set()
    assert daemon.snapshot_names() == daemon.backend_keys() == set()
    assert daemon.snapshot_dirs() == []


def test_image_labels_reference_too(daemon: Daemon) -> None:
    extra = put(daemon, b"signature")
    snap = committed(daemon, "kept-by-image")
    target = put(daemon, b"manifest")
    daemon.meta.images.create(Image("img", Descriptor(MANIFEST, target, 8),
                                    {f"{REF_CONTENT}.sig": extra, REF_SNAPSHOT: snap}))
    daemon.collect()
    assert daemon.disk() == {target, extra}
    assert daemon.snapshot_names() == {snap}


def test_references_stay_within_a_namespace(daemon: Daemon) -> None:
    pull(daemon, "a", [b"layer"])
    [chain_id] = daemon.snapshot_names()
    with namespaces.use("other"):
        # Same key, same bytes: nothing in this namespace refers to them.
        committed(daemon, chain_id)
        put(daemon, b"layer")
    daemon.collect()
    assert daemon.snapshot_names() == {chain_id}
    assert digest_of(b"layer") in daemon.rows() | daemon.disk()
    with namespaces.use("other"):
        assert daemon.snapshot_names() == set()
        assert daemon.rows() == set()
    assert len(daemon.backend_keys()) == 1


@pytest.mark.parametrize("key", [
    REF_CONTENT,
    f"{REF_CONTENT}.config",
    f"{REF_CONTENT}.l.0",
    f"{REF_CONTENT}/named",
    f"{REF_CONTENT}.m.sha256:{'0' * 64}",
])
def test_content_reference_label_forms(daemon: Daemon, key: str) -> None:
    child = put(daemon, b"child")
    parent = put(daemon, b"parent", {key: child, ROOT: "yes"})
    daemon.collect()
    assert daemon.disk() == {parent, child}


def test_content_reference_label_needs_a_separator(daemon: Daemon) -> None:
    child = put(daemon, b"child")
    parent = put(daemon, b"parent", {f"{REF_CONTENT}ious": child, ROOT: "yes"})
    daemon.collect()
    assert daemon.disk() == {parent}


@pytest.mark.parametrize("key", [
    REF_SNAPSHOT,
    f"{REF_SNAPSHOT}/1",
])
def test_snapshot_reference_label_forms(daemon: Daemon, key: str) -> None:
    snap = committed(daemon, "referenced")
    put(daemon, b"config", {key: snap, ROOT: "yes"})
    daemon.collect()
    assert daemon.snapshot_names() == {snap}


# --- content shared between namespaces --------------------------------------------------------


def test_blob_shared_by_two_namespaces_stays_on_disk_until_both_drop_it(
        daemon: Daemon) -> None:
    blob = put(daemon, b"shared manifest")
    daemon.meta.images.create(Image("img", Descriptor(MANIFEST, blob, 15)))
    with namespaces.use("other"):
        with pytest.raises(errdefs.AlreadyExists):
            daemon.meta.content.writer("ref", expected=blob)
        daemon.meta.images.create(Image("img", Descriptor(MANIFEST, blob, 15)))

    daemon.meta.images.delete("img", sync=True)
    assert daemon.rows() == set()
    assert daemon.disk() == {blob}
    with namespaces.use("other"):
        assert daemon.rows() == {blob}
        daemon.meta.images.delete("img", sync=True)
        assert daemon.rows() == set()
    assert daemon.disk() == set()


def test_a_blob_recorded_from_disk_is_never_collected_half_way(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that finds the blob on disk (shared content, as a pull of an image just deleted
    elsewhere does) records it here and in its lease in one step for the collector: a
    collection that starts in between waits, and then keeps the leased blob. Before, it could
    remove the blob between the check and the insert, leaving a record (soon an image) that
    names bytes no longer on disk."""
    blob = put(daemon, b"deleted elsewhere just before")
    daemon.meta.content.delete(blob)  # no record left anywhere: the collector's to take
    real_info = daemon.local.info
    calls: list[str] = []
    collectors: list[threading.Thread] = []

    def info(digest: str) -> Info:
        found = real_info(digest)
        calls.append(digest)
        if len(calls) == 2:  # the record's own look at the blob, just before its row
            collector = threading.Thread(target=daemon.collect)
            collector.start()
            collector.join(0.5)  # done by now, unless it waits for the writer
            collectors.append(collector)
        return found

    monkeypatch.setattr(daemon.local, "info", info)
    with namespaces.use("other"):
        daemon.meta.leases.create("pull")
        with leases.use("pull"), pytest.raises(errdefs.AlreadyExists):
            daemon.meta.content.writer("ref", expected=blob)
    for collector in collectors:
        collector.join()
    monkeypatch.undo()
    assert collectors, "the writer never recorded the blob"
    with namespaces.use("other"):
        assert daemon.rows() == {blob}
        with daemon.meta.content.reader(blob) as r:
            assert r.read_at(0, 100) == b"deleted elsewhere just before"
        daemon.meta.leases.delete("pull")
    daemon.collect()
    assert daemon.disk() == set()


def test_deleted_record_lets_the_blob_go(daemon: Daemon) -> None:
    blob = put(daemon, b"rooted", {ROOT: "yes"})
    daemon.collect()
    assert daemon.disk() == {blob}
    daemon.meta.content.delete(blob)
    assert daemon.disk() == {blob}  # the record went, the bytes wait for the collector
    assert daemon.collect().blobs == 1
    assert daemon.disk() == set()


# --- leases -----------------------------------------------------------------------------------


def test_lease_protects_its_resources_and_what_they_reach_until_deleted(
        daemon: Daemon) -> None:
    config = put(daemon, b"config")  # not in the lease: reached through the manifest
    base = committed(daemon, "base")  # not in the lease: the parent of a leased snapshot
    daemon.meta.leases.create("pull")
    with leases.use("pull"):
        manifest = put(daemon, b"manifest", {f"{REF_CONTENT}.config": config})
        committed(daemon, "top", base)
        daemon.snapshots.prepare("work", "top")

    daemon.collect()
    assert daemon.disk() == {manifest, config}
    assert daemon.snapshot_names() == {"base", "top", "work"}

    daemon.meta.leases.delete("pull")
    stats = daemon.collect()
    assert (stats.content, stats.snapshots) == (2, 3)
    assert daemon.disk() == set()
    assert daemon.snapshot_names() == daemon.backend_keys() == set()


def test_lease_resources_added_by_hand_protect_too(daemon: Daemon) -> None:
    blob = put(daemon, b"blob")
    snap = committed(daemon, "snap")
    daemon.meta.leases.create("manual")
    daemon.meta.leases.add_resource("manual", Resource(blob, "content"))
    daemon.meta.leases.add_resource("manual", Resource(snap, "snapshots/overlayfs"))
    daemon.collect()
    assert (daemon.disk(), daemon.snapshot_names()) == ({blob}, {snap})

    daemon.meta.leases.delete_resource("manual", Resource(blob, "content"))
    daemon.collect()
    assert (daemon.disk(), daemon.snapshot_names()) == (set(), {snap})


@pytest.mark.parametrize(("expire", "expired"), [
    ("2000-01-01T00:00:00Z", True),
    ("2000-01-01T00:00:00.123456789Z", True),  # Go's RFC3339Nano
    ("2000-01-01T02:00:00+02:00", True),
    ("2999-01-01T00:00:00Z", False),
    ("not a time", False),  # ignored, as containerd does
])
def test_lease_expiry(daemon: Daemon, expire: str, expired: bool) -> None:
    daemon.meta.leases.create("temp", {EXPIRE: expire})
    with leases.use("temp"):
        blob = put(daemon, b"leased")
        committed(daemon, "leased")
    stats = daemon.collect()
    assert stats.leases == int(expired)
    assert [lease.id for lease in daemon.meta.leases.list()] == ([] if expired else ["temp"])
    assert daemon.disk() == (set() if expired else {blob})
    assert daemon.snapshot_names() == (set() if expired else {"leased"})


def test_flat_lease_protects_only_its_direct_resources(daemon: Daemon) -> None:
    daemon.meta.leases.create("flat", {FLAT: ""})
    daemon.meta.leases.create("deep")
    config, snap = put(daemon, b"config"), committed(daemon, "unpacked")
    deep_config = put(daemon, b"deep config")
    with leases.use("flat"):
        flat_manifest = put(daemon, b"flat manifest",
                            {f"{REF_CONTENT}.config": config, REF_SNAPSHOT: snap})
    with leases.use("deep"):
        deep_manifest = put(daemon, b"deep manifest", {f"{REF_CONTENT}.config": deep_config})

    daemon.collect()
    assert daemon.disk() == {flat_manifest, deep_manifest, deep_config}
    assert daemon.snapshot_names() == set()


def test_flat_lease_does_not_hide_references_reached_from_roots(daemon: Daemon) -> None:
    daemon.meta.leases.create("flat", {FLAT: ""})
    with leases.use("flat"):
        image = pull(daemon, "a", [b"layer"])  # everything is in the flat lease
    daemon.meta.leases.delete_resource("flat", Resource(image.config, "content"))
    daemon.meta.leases.delete_resource("flat", Resource(image.layers[0], "content"))
    daemon.collect()
    # The image reaches its manifest, and the manifest its config and layer.
    assert daemon.disk() == blobs_of(image)


def test_flat_lease_keeps_a_snapshots_parents(daemon: Daemon) -> None:
    base = committed(daemon, "base")
    daemon.meta.leases.create("flat", {FLAT: ""})
    with leases.use("flat"):
        daemon.snapshots.prepare("work", base)
    daemon.collect()
    assert daemon.snapshot_names() == {"base", "work"}


def test_ingests_are_never_collected(daemon: Daemon) -> None:
    daemon.meta.leases.create("pull", {EXPIRE: "2000-01-01T00:00:00Z"})
    with leases.use("pull"):
        w = daemon.meta.content.writer("layer", total=6)
    w.write(b"lay")
    w.close()
    open_writer = daemon.meta.content.writer("open", total=2)
    open_writer.write(b"o")

    stats = daemon.collect()
    assert stats.leases == 1
    assert {s.ref for s in daemon.meta.content.list_statuses()} == {"layer", "open"}
    open_writer.close()
    with daemon.meta.content.writer("layer", total=6) as resumed:
        assert resumed.status().offset == 3
        resumed.write(b"er!")
        resumed.commit(6, digest_of(b"layer!"))


# --- roots by label ---------------------------------------------------------------------------


def test_gc_root_labels_keep_blobs_and_snapshots(daemon: Daemon) -> None:
    child = put(daemon, b"child")
    rooted = put(daemon, b"rooted", {ROOT: "2024-01-01T00:00:00Z",
                                    f"{REF_CONTENT}.child": child})
    base = committed(daemon, "base")
    committed(daemon, "top", base, labels={ROOT: "x"})
    daemon.snapshots.prepare("unrooted", "top")

    daemon.collect()
    assert daemon.disk() == {rooted, child}
    assert daemon.snapshot_names() == {"base", "top"}

    daemon.snapshots.update(SnapshotInfo("top", Kind.COMMITTED, labels={}), ["labels." + ROOT])
    daemon.meta.content.update(Info(rooted, 0), ["labels." + ROOT])
    daemon.collect()
    assert daemon.disk() == set()
    assert daemon.snapshot_names() == set()


# --- the backends -----------------------------------------------------------------------------


def test_orphan_backend_snapshots_are_swept_children_first(daemon: Daemon) -> None:
    keep = committed(daemon, "keep", labels={ROOT: "x"})
    backend: Snapshotter = daemon.backend
    # What a crash between the backend's work and the row leaves behind.
    backend.prepare(f"{NS}/99/x")
    backend.commit(f"{NS}/99/X", f"{NS}/99/x")
    backend.prepare(f"{NS}/100/y", f"{NS}/99/X")
    backend.commit(f"{NS}/100/Y", f"{NS}/100/y")
    backend.prepare(f"{NS}/101/z", f"{NS}/100/Y")
    backend.view(f"{NS}/102/v", f"{NS}/99/X")
    assert len(daemon.snapshot_dirs()) == 5

    stats = daemon.collect()
    assert (stats.snapshots, stats.backend_snapshots) == (0, 4)
    assert daemon.snapshot_names() == {keep}
    assert len(daemon.backend_keys()) == len(daemon.snapshot_dirs()) == 1


def test_removed_snapshot_leaves_the_backend_at_once(daemon: Daemon) -> None:
    committed(daemon, "base", labels={ROOT: "x"})
    daemon.snapshots.prepare("work", "base")
    daemon.snapshots.remove("work")
    assert len(daemon.backend_keys()) == len(daemon.snapshot_dirs()) == 1
    assert daemon.collect().backend_snapshots == 0


# --- scheduling -------------------------------------------------------------------------------


def test_deletions_reach_the_scheduler(daemon: Daemon) -> None:
    calls: list[bool] = []
    daemon.meta.set_scheduler(calls.append)
    image = pull(daemon, "a", [b"layer"])
    daemon.meta.images.delete("a")
    daemon.meta.images.create(Image("a", Descriptor(MANIFEST, image.manifest, 0)))
    daemon.meta.images.delete("a", sync=True)
    daemon.meta.images.create(Image("a", Descriptor(MANIFEST, image.manifest, 0)))
    daemon.meta.images.update(Image("a", Descriptor(MANIFEST, image.config, 0)), ["target"])
    daemon.meta.images.update(Image("a", Descriptor(MANIFEST, image.config, 0), {"x": "y"}),
                              ["labels.x"])  # references unchanged: no collection
    daemon.meta.content.delete(image.layers[0])
    assert calls == [False, True, False, False]
    assert daemon.disk() == blobs_of(image)  # the scheduler decides; this one did nothing


def test_scheduler_collects_in_the_background(daemon: Daemon) -> None:
    scheduler = Scheduler(daemon.meta.collector, delay=0.01)
    daemon.meta.set_scheduler(scheduler.trigger)
    scheduler.start()
    try:
        pull(daemon, "a", [b"layer"])
        daemon.meta.images.delete("a")
        deadline = time.monotonic() + 5
        while daemon.disk() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert daemon.disk() == set()
        assert daemon.snapshot_names() == set()
    finally:
        scheduler.stop()
    assert not any(t.name == "gc-scheduler" and t.is_alive() for t in threading.enumerate())
