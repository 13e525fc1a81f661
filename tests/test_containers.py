"""Containers: the metadata store (CRUD, validation, filters, field masks, events, namespaces,
garbage-collection roots, persistence), then the gRPC service through the real `ctr` and a raw
client against berthd."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Ctr
from daemon import Berthd
from google.protobuf import any_pb2
from images import ImageInfo

from berth import errdefs, namespaces
from berth.api.events import container_pb2
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc
from berth.containers import AnyValue, Container, RuntimeInfo, pack_spec, unpack_spec
from berth.content.local import LocalStore
from berth.events import Exchange
from berth.events.exchange import Subscription
from berth.images import Image
from berth.metadata.store import Metadata
from berth.oci.image import Descriptor
from berth.oci.spec import SPEC_TYPE_URL, generate_spec
from berth.snapshots.overlay import OverlaySnapshotter

NS = "containers-test"
RUNC = "io.containerd.runc.v2"
RUNC_OPTIONS = AnyValue("containerd.runc.v1.Options")
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.overlayfs"
REF_CONTENT = "containerd.io/gc.ref.content"


@pytest.fixture(autouse=True)
def namespace() -> Iterator[str]:
    with namespaces.use(NS):
        yield NS


class Daemon:
    """A Metadata on ``root`` (content, an overlay snapshotter, events), reopened by
    :meth:`restart`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = Exchange()
        self.meta = self._open()

    def _open(self) -> Metadata:
        return Metadata(str(self.root / "meta"), LocalStore(str(self.root / "content")),
                        {"overlayfs": OverlaySnapshotter(str(self.root / "overlayfs"))},
                        self.events)

    def close(self) -> None:
        for s in self.meta.snapshotters.values():
            s.close()
        self.meta.close()

    def restart(self) -> Metadata:
        self.close()
        self.meta = self._open()
        return self.meta

    def snapshot_keys(self) -> set[str]:
        return {i.name for i in self.meta.snapshotters["overlayfs"].walk()}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.close()


@pytest.fixture
def meta(daemon: Daemon) -> Metadata:
    return daemon.meta


SPEC = pack_spec(generate_spec(NS, "template"))


def container(cid: str, **fields: object) -> Container:
    c = Container(id=cid, runtime=RuntimeInfo(RUNC, RUNC_OPTIONS), spec=SPEC)
    for name, value in fields.items():
        setattr(c, name, value)
    return c


def events_of(sub: Subscription) -> list[tuple[str, str, object]]:
    out: list[tuple[str, str, object]] = []
    while (env := sub.get(timeout=0)) is not None:
        out.append((env.namespace, env.topic, env.message))
    return out


# -- create, get, list, delete -----------------------------------------------------------------


def test_create_get_list_delete(meta: Metadata) -> None:
    store = meta.containers
    made = store.create(container("web", labels={"tier": "front"}, image="docker.io/x:1",
                                  snapshotter="overlayfs", snapshot_key="web",
                                  spec=pack_spec(generate_spec(NS, "web")),
                                  extensions={"ext": AnyValue("t/x", b"\x00\x01")}))
    assert made.created_at == made.updated_at > 0
    got = store.get("web")
    assert got == made
    assert got.runtime == RuntimeInfo(RUNC, RUNC_OPTIONS)
    assert got.extensions == {"ext": AnyValue("t/x", b"\x00\x01")}
    assert unpack_spec(got.spec)["linux"]["cgroupsPath"] == f"/{NS}/web"
    assert got.spec is not None and got.spec.type_url == SPEC_TYPE_URL
    store.create(container("api"))
    assert [c.id for c in store.list()] == ["api", "web"]
    with pytest.raises(errdefs.AlreadyExists, match='"web"'):
        store.create(container("web"))
    store.delete("web")
    with pytest.raises(errdefs.NotFound, match='"web"'):
        store.get("web")
    with pytest.raises(errdefs.NotFound):
        store.delete("web")
    assert [c.id for c in store.list()] == ["api"]


def test_runtime_options_unset_and_empty_are_kept_apart(meta: Metadata) -> None:
    meta.containers.create(container("unset", runtime=RuntimeInfo(RUNC)))
    meta.containers.create(container("empty", runtime=RuntimeInfo(RUNC, AnyValue(""))))
    assert meta.containers.get("unset").runtime.options is None
    assert meta.containers.get("empty").runtime.options == AnyValue("")


def test_containers_are_per_namespace(meta: Metadata) -> None:
    meta.containers.create(container("same", image="a"))
    with namespaces.use("other"):
        meta.containers.create(container("same", image="b"))
        assert meta.containers.get("same").image == "b"
        meta.containers.delete("same")
    assert meta.containers.get("same").image == "a"


@pytest.mark.parametrize("bad", [
    container(""), container("-leading"), container("trailing."), container("a b"),
    container("a/b"), container("x" * 77), container("ok", runtime=RuntimeInfo("")),
    container("ok", spec=None), container("ok", snapshot_key="k"),
    container("ok", extensions={"": AnyValue("t")}), container("ok", labels={"": "v"}),
    container("ok", labels={"k": "v" * 5000}),
], ids=["empty-id", "leading-dash", "trailing-dot", "space", "slash", "too-long",
        "no-runtime", "no-spec", "key-without-snapshotter", "empty-extension-key",
        "empty-label-key", "label-too-long"])
def test_create_validates(meta: Metadata, bad: Container) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        meta.containers.create(bad)
    assert meta.containers.list() == []


def test_unpack_spec_refuses_what_is_not_a_json_object() -> None:
    assert unpack_spec(pack_spec({"a": 1})) == {"a": 1}
    for bad in (None, AnyValue(SPEC_TYPE_URL, b"\xff"), AnyValue(SPEC_TYPE_URL, b"[1]"),
                AnyValue(SPEC_TYPE_URL, b"{")):
        with pytest.raises(errdefs.InvalidArgument):
            unpack_spec(bad)


# -- filters -----------------------------------------------------------------------------------


def test_list_filters(meta: Metadata) -> None:
    meta.containers.create(container("a1", image="img/a", labels={"app": "web", "n": "1"},
                                     snapshotter="overlayfs", snapshot_key="key-a1"))
    meta.containers.create(container("a2", image="img/a", labels={"app": "db"},
                                     runtime=RuntimeInfo("io.containerd.kata.v2")))
    meta.containers.create(container("b1", image="img/b"))

    def ids(*filters: str) -> list[str]:
        return [c.id for c in meta.containers.list(filters)]

    assert ids() == ["a1", "a2", "b1"]
    assert ids("id==a2") == ["a2"]
    assert ids("image==img/a") == ["a1", "a2"]
    assert ids("runtime.name==io.containerd.kata.v2") == ["a2"]
    assert ids(f"runtime.name=={RUNC}") == ["a1", "b1"]
    assert ids("labels.app==web") == ["a1"]
    assert ids("labels.app") == ["a1", "a2"]
    assert ids("labels.app!=web") == ["a2", "b1"]
    assert ids("labels.app~=^d") == ["a2"]
    assert ids("snapshotter==overlayfs") == ["a1"]
    assert ids("snapshotkey==key-a1") == ["a1"]
    assert ids("snapshotter") == ["a1"]  # present only when set
    assert ids("image==img/a,labels.n==1") == ["a1"]
    assert ids("id==b1", "labels.app==db") == ["a2", "b1"]
    assert ids("nosuchfield") == []
    with pytest.raises(errdefs.InvalidArgument):
        meta.containers.list(["labels.app=="])


# -- updates -----------------------------------------------------------------------------------


def test_update_field_masks(meta: Metadata) -> None:
    store = meta.containers
    first = store.create(container("c", labels={"a": "1", "b": "2"}, image="img:1",
                                   snapshotter="overlayfs", snapshot_key="s1",
                                   extensions={"x": AnyValue("t/x", b"1"),
                                               "y": AnyValue("t/y", b"2")}))
    time.sleep(0.001)
    new = container("c", labels={"a": "9", "z": "3"}, image="img:2", snapshot_key="s2",
                    spec=pack_spec({"ociVersion": "changed"}),
                    extensions={"x": AnyValue("t/x", b"new")})

    got = store.update(new, ["labels.a", "labels.b"])  # b is absent from new: removed
    assert got.labels == {"a": "9"} and got.image == "img:1"
    assert got.created_at == first.created_at and got.updated_at > first.updated_at
    assert store.update(new, ["labels"]).labels == {"a": "9", "z": "3"}
    assert store.update(new, ["image"]).image == "img:2"
    assert store.update(new, ["snapshotkey"]).snapshot_key == "s2"
    assert store.update(container("c", snapshot_key="s3"), ["snapshot_key"]).snapshot_key == "s3"
    assert unpack_spec(store.update(new, ["spec"]).spec) == {"ociVersion": "changed"}
    got = store.update(new, ["extensions.y"])  # absent from new: removed
    assert got.extensions == {"x": AnyValue("t/x", b"1")}
    got = store.update(new, ["extensions.x"])
    assert got.extensions == {"x": AnyValue("t/x", b"new")}
    got = store.update(container("c"), ["extensions"])
    assert got.extensions == {}
    # Only what was named changed, and it was all stored.
    assert store.get("c") == got
    assert got.labels == {"a": "9", "z": "3"} and got.runtime == RuntimeInfo(RUNC, RUNC_OPTIONS)


def test_update_without_paths_replaces_the_mutable_fields(meta: Metadata) -> None:
    store = meta.containers
    store.create(container("c", labels={"a": "1"}, image="img:1", snapshotter="overlayfs",
                           snapshot_key="s1", extensions={"x": AnyValue("t")}))
    got = store.update(container("c", labels={"b": "2"}, image="img:2",
                                 snapshotter="overlayfs", snapshot_key="s2"))
    assert (got.labels, got.image, got.snapshot_key, got.extensions) == (
        {"b": "2"}, "img:2", "s2", {})
    # The immutable fields must be sent unchanged.
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter"):
        store.update(container("c", snapshotter="native", snapshot_key="s2"))
    with pytest.raises(errdefs.InvalidArgument, match="runtime"):
        store.update(container("c", snapshotter="overlayfs", snapshot_key="s2",
                               runtime=RuntimeInfo("io.containerd.kata.v2")))
    assert store.get("c") == got


@pytest.mark.parametrize("path", ["runtime", "runtime.name", "snapshotter", "id", "created_at",
                                  "nonsense"])
def test_update_refuses_fields_that_cannot_change(meta: Metadata, path: str) -> None:
    meta.containers.create(container("c"))
    with pytest.raises(errdefs.InvalidArgument, match="cannot update"):
        meta.containers.update(container("c", runtime=RuntimeInfo("other")), [path])
    assert meta.containers.get("c").runtime.name == RUNC


def test_update_validates_the_result_and_needs_the_container(meta: Metadata) -> None:
    meta.containers.create(container("c"))
    with pytest.raises(errdefs.InvalidArgument, match="snapshotter must be set"):
        meta.containers.update(container("c", snapshot_key="k"), ["snapshotkey"])
    with pytest.raises(errdefs.InvalidArgument, match="spec"):
        meta.containers.update(container("c", spec=None), ["spec"])
    with pytest.raises(errdefs.InvalidArgument):
        meta.containers.update(container("c", labels={"k": "v" * 5000}), ["labels.k"])
    with pytest.raises(errdefs.NotFound):
        meta.containers.update(container("missing"), ["labels.a"])
    with pytest.raises(errdefs.InvalidArgument):
        meta.containers.update(container(""), ["labels.a"])
    assert meta.containers.get("c").snapshot_key == ""


# -- events ------------------------------------------------------------------------------------


def test_events(daemon: Daemon) -> None:
    store = daemon.meta.containers
    sub = daemon.events.subscribe(["topic~=^/containers/"])
    store.create(container("c", image="img:1"))
    store.update(container("c", labels={"k": "v"}, image="img:1"), ["labels.k"])
    store.delete("c")
    store.create(container("d"))
    with pytest.raises(errdefs.AlreadyExists):
        store.create(container("d"))
    with pytest.raises(errdefs.NotFound):
        store.delete("missing")
    with pytest.raises(errdefs.InvalidArgument):
        store.update(container("d"), ["runtime"])
    runtime = container_pb2.ContainerCreate.Runtime(
        name=RUNC, options={"type_url": RUNC_OPTIONS.type_url})
    assert events_of(sub) == [
        (NS, "/containers/create",
         container_pb2.ContainerCreate(id="c", image="img:1", runtime=runtime)),
        (NS, "/containers/update",
         container_pb2.ContainerUpdate(id="c", image="img:1", labels={"k": "v"})),
        (NS, "/containers/delete", container_pb2.ContainerDelete(id="c")),
        (NS, "/containers/create",
         container_pb2.ContainerCreate(id="d", runtime=runtime)),
    ]


# -- namespaces, garbage collection, restarts --------------------------------------------------


def test_namespace_with_containers_cannot_be_deleted(meta: Metadata) -> None:
    meta.namespaces.create("doomed")
    with namespaces.use("doomed"):
        meta.containers.create(container("c"))
    with pytest.raises(errdefs.FailedPrecondition, match="containers"):
        meta.namespaces.delete("doomed")
    with namespaces.use("doomed"):
        meta.containers.delete("c")
    meta.namespaces.delete("doomed")


def test_a_container_keeps_its_snapshot_from_the_collector(daemon: Daemon) -> None:
    meta = daemon.meta
    snaps = meta.snapshotters["overlayfs"]
    snaps.prepare("base-active")
    snaps.commit("base", "base-active")
    snaps.prepare("rootfs", "base")
    snaps.prepare("stray")
    meta.containers.create(container("c", snapshotter="overlayfs", snapshot_key="rootfs"))
    meta.collector.collect()
    assert daemon.snapshot_keys() == {"base", "rootfs"}  # the parent chain is kept too
    # Pointing the container at another snapshot lets the old one go.
    snaps.prepare("rootfs2", "base")
    meta.containers.update(container("c", snapshot_key="rootfs2"), ["snapshotkey"])
    meta.collector.collect()
    assert daemon.snapshot_keys() == {"base", "rootfs2"}
    meta.containers.delete("c")
    meta.collector.collect()
    assert daemon.snapshot_keys() == set()


def test_a_container_keeps_what_its_reference_labels_name(daemon: Daemon) -> None:
    meta = daemon.meta
    snaps = meta.snapshotters["overlayfs"]
    snaps.prepare("extra")
    data = b"a blob only a container refers to"
    w = meta.content.writer("ref-blob", total=len(data))
    try:
        w.write(data)
        digest = w.commit(len(data), "sha256:" + hashlib.sha256(data).hexdigest())
    finally:
        w.close()
    meta.containers.create(container("c", labels={REF_SNAPSHOT: "extra",
                                                  f"{REF_CONTENT}.blob": digest}))
    meta.collector.collect()
    assert daemon.snapshot_keys() == {"extra"}
    assert meta.content.info(digest).digest == digest
    meta.containers.update(container("c"), ["labels"])
    meta.collector.collect()
    assert daemon.snapshot_keys() == set()
    with pytest.raises(errdefs.NotFound):
        meta.content.info(digest)


def test_a_container_does_not_keep_its_image(daemon: Daemon) -> None:
    meta = daemon.meta
    meta.images.create(Image("img", Descriptor(
        "application/vnd.oci.image.manifest.v1+json", "sha256:" + "a" * 64, 10)))
    meta.containers.create(container("c", image="img"))
    meta.images.delete("img")  # allowed, as in containerd
    assert meta.containers.get("c").image == "img"


def test_containers_survive_a_restart(daemon: Daemon) -> None:
    made = daemon.meta.containers.create(container(
        "c", labels={"k": "v"}, snapshotter="overlayfs", snapshot_key="c",
        extensions={"e": AnyValue("t/e", bytes(range(256)))}))
    meta = daemon.restart()
    assert meta.containers.get("c") == made


# -- through the API ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(module_berthd: Berthd, busybox_image: ImageInfo) -> Ctr:
    c = Ctr(module_berthd.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    return c


def _snapshot_keys(c: Ctr) -> set[str]:
    out = c("snapshots", "--snapshotter", "overlayfs", "ls").stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


@pytest.mark.needs_root
def test_ctr_container_lifecycle(pulled: Ctr, busybox_image: ImageInfo) -> None:
    c = pulled
    ref = busybox_image.ref
    c("containers", "create", "--snapshotter", "overlayfs", "--label", "team=a", ref, "web")
    c("containers", "create", "--snapshotter", "overlayfs", ref, "db", "sleep", "60")

    out = c("containers", "ls").stdout.splitlines()
    assert out[0].split() == ["CONTAINER", "IMAGE", "RUNTIME"]
    assert [line.split() for line in out[1:]] == [["db", ref, RUNC], ["web", ref, RUNC]]
    assert c("containers", "ls", "-q").stdout.split() == ["db", "web"]
    assert c("containers", "ls", "labels.team==a").stdout.split()[3:] == ["web", ref, RUNC]

    info = json.loads(c("containers", "info", "db").stdout)
    assert info["ID"] == "db" and info["Image"] == ref and info["SnapshotKey"] == "db"
    assert info["Snapshotter"] == "overlayfs"
    assert info["Runtime"] == {"Name": RUNC, "Options": {"type_url": RUNC_OPTIONS.type_url}}
    assert info["Spec"]["process"]["args"] == ["sleep", "60"]
    assert info["Spec"]["linux"]["cgroupsPath"] == "/default/db"
    assert info["CreatedAt"] == info["UpdatedAt"]

    labelled = c("containers", "label", "web", "k=v").stdout
    assert "k=v" in labelled and "team=a" in labelled
    assert json.loads(c("containers", "info", "web").stdout)["Labels"]["k"] == "v"
    c("containers", "label", "web", "k=")
    assert "k" not in json.loads(c("containers", "info", "web").stdout)["Labels"]

    again = c("containers", "create", "--snapshotter", "overlayfs", ref, "web", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    missing = c("containers", "info", "nope", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    assert c("containers", "rm", "nope", check=False).returncode != 0

    busy = c("namespaces", "rm", "default", check=False)
    assert busy.returncode != 0 and "containers" in busy.stderr

    assert {"web", "db"} <= _snapshot_keys(c)
    c("containers", "rm", "web", "db")  # ctr removes each one's snapshot, then the container
    assert c("containers", "ls", "-q").stdout.split() == []
    assert not {"web", "db"} & _snapshot_keys(c)


@pytest.mark.needs_root
def test_ctr_container_keeps_its_snapshot_until_removed(
        pulled: Ctr, module_berthd: Berthd, busybox_image: ImageInfo) -> None:
    c = pulled
    c("containers", "create", "--snapshotter", "overlayfs", busybox_image.ref, "kept")
    # A deletion elsewhere runs the collector: the container's snapshot must survive it.
    c("snapshots", "--snapshotter", "overlayfs", "prepare", "gc-trigger")
    c("snapshots", "--snapshotter", "overlayfs", "rm", "gc-trigger")
    time.sleep(1.5)
    assert "kept" in _snapshot_keys(c)
    # Without ctr's own clean-up, the snapshot is garbage once the container is gone.
    c("containers", "rm", "--keep-snapshot", "kept")
    deadline = time.monotonic() + 10
    while "kept" in _snapshot_keys(c) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "kept" not in _snapshot_keys(c)
    assert len(_snapshot_keys(c)) == 1  # the image's committed layer stays


@pytest.mark.needs_root
def test_api_list_and_errors(module_berthd: Berthd) -> None:
    md = (("containerd-namespace", "api-test"),)
    with grpc.insecure_channel(f"unix:{module_berthd.address}") as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        spec = pack_spec(generate_spec("api-test", "one"))
        made = stub.Create(pb.CreateContainerRequest(container=pb.Container(
            id="one", runtime=pb.Container.Runtime(name=RUNC),
            spec={"type_url": spec.type_url, "value": spec.value},
            extensions={"e": any_pb2.Any(type_url="t/e", value=b"\x01")})),
            metadata=md).container
        assert made.created_at.seconds > 0 and not made.runtime.HasField("options")
        listed = stub.List(pb.ListContainersRequest(filters=["id==one"]), metadata=md)
        assert [x.id for x in listed.containers] == ["one"]
        assert listed.containers[0].extensions["e"].value == b"\x01"
        streamed = list(stub.ListStream(pb.ListContainersRequest(), metadata=md))
        assert [m.container.id for m in streamed] == ["one"]

        def code(call: object, request: object) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as err:
                call(request, metadata=md)  # type: ignore[operator]
            status: grpc.StatusCode = err.value.code()
            return status

        assert code(stub.Create, pb.CreateContainerRequest(container=pb.Container(
            id="nospec", runtime=pb.Container.Runtime(name=RUNC)))) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert code(stub.Create, pb.CreateContainerRequest(container=made)) == \
            grpc.StatusCode.ALREADY_EXISTS
        assert code(stub.Update, pb.UpdateContainerRequest(
            container=pb.Container(id="one", runtime=pb.Container.Runtime(name="x")),
            update_mask={"paths": ["runtime"]})) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(stub.Get, pb.GetContainerRequest(id="zzz")) == grpc.StatusCode.NOT_FOUND
        assert code(stub.List, pb.ListContainersRequest(filters=["id=="])) == \
            grpc.StatusCode.INVALID_ARGUMENT

        updated = stub.Update(pb.UpdateContainerRequest(
            container=pb.Container(id="one", image="new", labels={"a": "b"}),
            update_mask={"paths": ["image", "labels.a"]}), metadata=md).container
        assert (updated.image, dict(updated.labels)) == ("new", {"a": "b"})
        assert updated.spec.value == spec.value
        stub.Delete(pb.DeleteContainerRequest(id="one"), metadata=md)
        assert code(stub.Delete, pb.DeleteContainerRequest(id="one")) == \
            grpc.StatusCode.NOT_FOUND
