"""The containers, images, leases and namespaces proxies and the differ's, against a real berthd:
round trips through the API, and berthd's errors coming back as Berth's own (NotFound,
AlreadyExists, FailedPrecondition, InvalidArgument, NotImplementedByBerth)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Berthd
from proxies import leased_connection

from berth import errdefs
from berth.api.events import namespace_pb2
from berth.containers import AnyValue, Container, RuntimeInfo, pack_spec
from berth.events import Envelope
from berth.images import Image
from berth.leases import Resource
from berth.mount import temp_mount
from berth.namespaces import Namespace
from berth.oci.image import MEDIA_TYPE_LAYER_GZIP, Descriptor
from berth.proxy.connection import Connection
from berth.proxy.containers import ContainersProxy
from berth.proxy.content import ContentProxy
from berth.proxy.diff import DiffProxy
from berth.proxy.events import EventsProxy, fields
from berth.proxy.images import ImagesProxy
from berth.proxy.leases import LeasesProxy
from berth.proxy.namespaces import NamespacesProxy
from berth.proxy.snapshots import SnapshotterProxy

pytestmark = pytest.mark.needs_root

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def conn(module_berthd: Berthd) -> Iterator[Connection]:
    with leased_connection(module_berthd) as c:
        yield c


# -- containers ------------------------------------------------------------------------------


def _container(cid: str = "c1") -> Container:
    return Container(
        id=cid, runtime=RuntimeInfo("io.containerd.runc.v2"),
        spec=pack_spec({"ociVersion": "1.0.2", "process": {"args": ["true"]}}),
        labels={"berth/name": cid}, image="docker.io/library/busybox:latest",
        snapshotter="overlayfs", snapshot_key=cid,
        extensions={"x": AnyValue("example.com/X", b"\x01\x02")})


def test_containers_round_trip(conn: Connection) -> None:
    store = ContainersProxy(conn)
    made = store.create(_container())
    assert made.created_at > 0 and made.updated_at == made.created_at
    got = store.get("c1")
    assert got == made
    assert got.runtime.options is None  # unset stays unset, not an empty Any
    assert got.extensions == {"x": AnyValue("example.com/X", b"\x01\x02")}
    store.create(_container("c2"))
    assert [c.id for c in store.list()] == ["c1", "c2"]
    assert [c.id for c in store.list(["labels.\"berth/name\"==c2"])] == ["c2"]

    changed = _container()
    changed.labels = {"new": "label"}
    updated = store.update(changed, ["labels"])
    assert updated.labels == {"new": "label"}
    assert updated.created_at == made.created_at and updated.updated_at >= made.updated_at

    store.delete("c1")
    with pytest.raises(errdefs.NotFound):
        store.get("c1")
    with pytest.raises(errdefs.NotFound):
        store.delete("c1")
    store.delete("c2")


def test_containers_errors(conn: Connection) -> None:
    store = ContainersProxy(conn)
    store.create(_container())
    try:
        with pytest.raises(errdefs.AlreadyExists):
            store.create(_container())
        with pytest.raises(errdefs.InvalidArgument):
            store.create(_container("bad/id"))
        no_spec = _container("c3")
        no_spec.spec = None
        with pytest.raises(errdefs.InvalidArgument, match="spec"):
            store.create(no_spec)
    finally:
        store.delete("c1")


# -- images ----------------------------------------------------------------------------------


def test_images_round_trip(conn: Connection) -> None:
    store = ImagesProxy(conn)
    target = Descriptor(MANIFEST, DIGEST, 123, {"a": "b"})
    made = store.create(Image("example.com/a:1", target, {"l": "1"}))
    assert (made.target, made.labels) == (target, {"l": "1"})
    assert made.created_at > 0
    assert store.get("example.com/a:1") == made
    store.create(Image("example.com/b:1", target))
    assert [i.name for i in store.list()] == ["example.com/a:1", "example.com/b:1"]
    assert [i.name for i in store.list(["name==example.com/b:1"])] == ["example.com/b:1"]

    other = Descriptor(MANIFEST, "sha256:" + "cd" * 32, 7)
    moved = store.put(Image("example.com/a:1", other))
    assert moved.target == other and moved.labels == {"l": "1"}  # only the target changed
    assert store.put(Image("example.com/c:1", other)).target == other

    for name in ("example.com/a:1", "example.com/b:1", "example.com/c:1"):
        store.delete(name, sync=name.endswith("c:1"))
    assert store.list() == []


def test_images_errors(conn: Connection) -> None:
    store = ImagesProxy(conn)
    target = Descriptor(MANIFEST, DIGEST, 1)
    store.create(Image("example.com/a:1", target))
    try:
        with pytest.raises(errdefs.AlreadyExists):
            store.create(Image("example.com/a:1", target))
        with pytest.raises(errdefs.NotFound):
            store.get("example.com/none:1")
        with pytest.raises(errdefs.NotFound):
            store.delete("example.com/none:1")
        with pytest.raises(errdefs.InvalidArgument):
            store.create(Image("example.com/bad:1", Descriptor(MANIFEST, "sha256:abc", 1)))
        with pytest.raises(errdefs.InvalidArgument):
            store.list(["name=="])
    finally:
        store.delete("example.com/a:1")


# -- leases ----------------------------------------------------------------------------------


def test_leases_round_trip(conn: Connection) -> None:
    leases = LeasesProxy(conn)
    made = leases.create("mine", {"containerd.io/gc.expire": "2100-01-01T00:00:00Z"})
    assert made.id == "mine" and made.created_at > 0
    assert made.labels == {"containerd.io/gc.expire": "2100-01-01T00:00:00Z"}
    assert "mine" in {x.id for x in leases.list()}
    assert [x.id for x in leases.list(["id==mine"])] == ["mine"]
    generated = leases.create()
    assert generated.id

    blob = Resource(DIGEST, "content")
    snap = Resource("key", "snapshots/overlayfs")
    leases.add_resource("mine", blob)
    leases.add_resource("mine", snap)
    assert set(leases.list_resources("mine")) == {blob, snap}
    leases.delete_resource("mine", blob)
    assert leases.list_resources("mine") == [snap]

    leases.delete("mine")
    leases.delete(generated.id, sync=True)
    assert "mine" not in {x.id for x in leases.list()}


def test_leases_errors(conn: Connection) -> None:
    leases = LeasesProxy(conn)
    leases.create("mine")
    try:
        with pytest.raises(errdefs.AlreadyExists):
            leases.create("mine")
        with pytest.raises(errdefs.NotFound):
            leases.delete("none")
        with pytest.raises(errdefs.NotFound):
            leases.list_resources("none")
        with pytest.raises(errdefs.InvalidArgument, match="resource type"):
            leases.add_resource("mine", Resource("x", "nonsense"))
    finally:
        leases.delete("mine")


# -- namespaces ------------------------------------------------------------------------------


def test_namespaces_round_trip(module_berthd: Berthd) -> None:
    conn = Connection(module_berthd.address)  # no namespace of its own: none is needed
    try:
        store = NamespacesProxy(conn)
        assert store.create("proxy-ns", {"a": "1"}) == Namespace("proxy-ns", {"a": "1"})
        assert store.get("proxy-ns") == Namespace("proxy-ns", {"a": "1"})
        assert "proxy-ns" in {n.name for n in store.list()}
        assert store.update(Namespace("proxy-ns", {"b": "2"}), ["labels.b"]).labels == {
            "a": "1", "b": "2"}
        assert store.update(Namespace("proxy-ns", {"c": "3"})).labels == {"c": "3"}
        with pytest.raises(errdefs.AlreadyExists):
            store.create("proxy-ns")
        with pytest.raises(errdefs.InvalidArgument):
            store.create("not a name")

        # A namespace that holds something cannot be deleted.
        inside = Connection(module_berthd.address, namespace="proxy-ns")
        try:
            lease = LeasesProxy(inside).create()
            with pytest.raises(errdefs.FailedPrecondition, match="leases"):
                store.delete("proxy-ns")
            LeasesProxy(inside).delete(lease.id)
        finally:
            inside.close()
        store.delete("proxy-ns")
        with pytest.raises(errdefs.NotFound):
            store.get("proxy-ns")
        with pytest.raises(errdefs.NotFound):
            store.delete("proxy-ns")
    finally:
        conn.close()


# -- diff ------------------------------------------------------------------------------------


def test_diff_compare_then_apply(conn: Connection) -> None:
    snapshots = SnapshotterProxy(conn, "overlayfs")
    with temp_mount(snapshots.prepare("source")) as root:
        Path(root, "etc").mkdir()
        Path(root, "etc/hello").write_text("hello, berth\n")
        os.symlink("hello", Path(root, "etc/link"))
    differ = DiffProxy(conn)
    sink = io.BytesIO()
    result = differ.compare([], snapshots.mounts("source"), sink)
    layer = sink.getvalue()
    assert result.descriptor.media_type == MEDIA_TYPE_LAYER_GZIP
    assert result.descriptor.digest == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert result.descriptor.size == len(layer)
    assert result.diff_id.startswith("sha256:")

    # The daemon stored the layer as well, labelled: apply it from there.
    content = ContentProxy(conn)
    assert content.info(result.descriptor.digest).labels == result.labels
    target = snapshots.prepare("target")
    applied = differ.apply(result.descriptor, target)
    assert applied.digest == result.diff_id
    with temp_mount(snapshots.mounts("target")) as root:
        assert Path(root, "etc/hello").read_text() == "hello, berth\n"
        assert os.readlink(Path(root, "etc/link")) == "hello"


def test_diff_errors(conn: Connection) -> None:
    snapshots = SnapshotterProxy(conn, "overlayfs")
    differ = DiffProxy(conn)
    mounts = snapshots.prepare("target")
    missing = Descriptor(MEDIA_TYPE_LAYER_GZIP, DIGEST, 10)
    with pytest.raises(errdefs.NotFound):
        differ.apply(missing, mounts)
    with pytest.raises(errdefs.InvalidArgument):
        differ.apply(missing, [])
    with pytest.raises(errdefs.NotImplementedByBerth, match="media"):
        differ.compare([], mounts, io.BytesIO(), media_type="application/x-unknown")


# -- events ----------------------------------------------------------------------------------


def test_events_publish_and_subscribe(conn: Connection) -> None:
    events = EventsProxy(conn)
    stream = events.subscribe(['topic=="/proxy/test"'])
    got: list[Envelope | Exception] = []

    def read_one() -> None:
        try:
            got.append(next(stream))
        except Exception as exc:  # shown by the assertion below
            got.append(exc)

    reader = threading.Thread(target=read_one, daemon=True)
    reader.start()
    event = namespace_pb2.NamespaceCreate(name="hello", labels={"a": "b"})
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:  # until the subscription is in place
        events.publish("/proxy/test", "containerd.events.NamespaceCreate",
                       event.SerializeToString())
        reader.join(0.2)
    stream.close()
    assert len(got) == 1, got
    envelope = got[0]
    assert isinstance(envelope, Envelope), envelope
    assert (envelope.topic, envelope.namespace) == ("/proxy/test", conn.namespace)
    assert envelope.timestamp > 0
    assert fields(envelope) == {"name": "hello", "labels": {"a": "b"}}
    with pytest.raises(errdefs.InvalidArgument):
        events.publish("no-slash", "containerd.events.NamespaceCreate", b"")
