"""The metadata layer: the conformance suites run against the namespaced content store and
snapshotter, then what only the metadata layer does (namespaces, labels, images, leases, events,
persistence across a restart)."""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from content_conformance import ContentStoreSuite, ReopenStore, digest_of, read_all
from snapshot_conformance import SnapshotterConformance

from berth import errdefs, leases, namespaces
from berth.api.events import content_pb2, image_pb2
from berth.content.content import Info, Store
from berth.content.local import LocalStore
from berth.events import Envelope, Exchange
from berth.events.exchange import Subscription
from berth.images import Image
from berth.leases import Resource
from berth.metadata.namespaces import Namespace
from berth.metadata.store import Metadata
from berth.oci.image import Descriptor
from berth.snapshots.overlay import OverlaySnapshotter
from berth.snapshots.snapshotter import Kind, Snapshotter

NS = "berth-test"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(autouse=True)
def namespace() -> Iterator[str]:
    """Every call below runs in a namespace, as a request through the API would."""
    with namespaces.use(NS):
        yield NS


@pytest.fixture
def threads_inherit_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads started by the test run in a copy of its context (namespace, lease).

    The conformance suites start bare threads; in berthd each request thread sets its namespace
    at the RPC edge, so a thread without one is not a request the metadata store can serve.
    """
    start = threading.Thread.start

    def start_in_context(self: threading.Thread) -> None:
        ctx = contextvars.copy_context()
        run = self.run
        self.run = lambda: ctx.run(run)  # type: ignore[method-assign]
        start(self)

    monkeypatch.setattr(threading.Thread, "start", start_in_context)


def open_metadata(root: Path, events: Exchange) -> Metadata:
    """A Metadata on ``root`` with new backends: what berthd builds at start-up."""
    return Metadata(
        str(root / "meta"),
        LocalStore(str(root / "content")),
        {"overlayfs": OverlaySnapshotter(str(root / "overlayfs"))},
        events,
    )


def close_metadata(m: Metadata) -> None:
    for s in m.snapshotters.values():
        s.close()
    m.close()


class Daemon:
    """A Metadata and its backends on one root; :meth:`restart` closes it and opens anew."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = Exchange()
        self.meta = open_metadata(root, self.events)

    @property
    def local(self) -> LocalStore:
        local = self.meta.content.local
        assert isinstance(local, LocalStore)
        return local

    @property
    def snapshots(self) -> Snapshotter:
        return self.meta.snapshotters["overlayfs"]

    @property
    def backend(self) -> Snapshotter:
        return self.meta.snapshotters["overlayfs"].backend

    def restart(self) -> Metadata:
        close_metadata(self.meta)
        self.meta = open_metadata(self.root, self.events)
        return self.meta


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    close_metadata(d.meta)


@pytest.fixture
def meta(daemon: Daemon) -> Metadata:
    return daemon.meta


def put(m: Metadata, data: bytes, labels: dict[str, str] | None = None,
        ref: str = "") -> str:
    """Write ``data`` through the metadata content store and commit it with ``labels``."""
    w = m.content.writer(ref or f"put-{digest_of(data)}", total=len(data))
    try:
        w.write(data)
        return w.commit(len(data), digest_of(data), labels)
    finally:
        w.close()


def events_of(sub: Subscription) -> list[Envelope]:
    """What the subscription holds now (publishing is synchronous: nothing is in flight)."""
    out = []
    while (env := sub.get(timeout=0)) is not None:
        out.append(env)
    return out


# --- the conformance suites ------------------------------------------------------------------



class TestMetadataContentConformance(ContentStoreSuite):
    @pytest.fixture
    def opened(self, tmp_path: Path) -> Iterator[list[Metadata]]:
        events = Exchange()
        instances = [open_metadata(tmp_path, events)]
        yield instances
        close_metadata(instances[-1])

    @pytest.fixture
    def store(self, opened: list[Metadata]) -> Store:
        return opened[0].content

    @pytest.fixture
    def reopen(self, tmp_path: Path, opened: list[Metadata]) -> ReopenStore:
        def restart() -> Store:
            close_metadata(opened[-1])
            opened.append(open_metadata(tmp_path, Exchange()))
            return opened[-1].content
        return restart

    @pytest.mark.usefixtures("threads_inherit_context")
    def test_one_writer_per_ref_across_threads(self, store: Store) -> None:
        super().test_one_writer_per_ref_across_threads(store)



class TestMetadataSnapshotterConformance(SnapshotterConformance):
    @pytest.fixture
    def open_snapshotter(self, tmp_path: Path) -> Iterator[Callable[[], Snapshotter]]:
        events = Exchange()
        opened: list[Metadata] = []

        def restart() -> Snapshotter:
            # The suite closes the snapshotter it was given (the backend); the database of the
            # Metadata that served it goes with the restart.
            if opened:
                opened[-1].close()
            opened.append(open_metadata(tmp_path, events))
            return opened[-1].snapshotters["overlayfs"]

        yield restart
        for m in opened:
            m.close()

    @pytest.mark.usefixtures("threads_inherit_context")
    def test_concurrent_use(self, snapshotter: Snapshotter) -> None:
        super().test_concurrent_use(snapshotter)


# --- content: namespaces and labels -----------------------------------------------------------


def test_blob_is_visible_only_in_its_namespace(meta: Metadata) -> None:
    digest = put(meta, b"only in A")
    with namespaces.use("other"):
        for call in (meta.content.info, meta.content.reader, meta.content.delete):
            with pytest.raises(errdefs.NotFound):
                call(digest)
        assert list(meta.content.walk()) == []
    assert meta.content.info(digest).size == len(b"only in A")


def test_writer_for_blob_of_another_namespace_shares_it(meta: Metadata) -> None:
    digest = put(meta, b"shared bytes", {"owner": "A"})
    with namespaces.use("other"):
        # containerd's shared content policy: knowing the digest of a blob on disk is enough to
        # see it; the writer reports AlreadyExists and the blob is now in this namespace too.
        with pytest.raises(errdefs.AlreadyExists):
            meta.content.writer("ref", expected=digest)
        info = meta.content.info(digest)
        assert (info.size, info.labels) == (len(b"shared bytes"), {})  # A's labels stay in A
        assert read_all(meta.content, digest) == b"shared bytes"
        assert meta.content.list_statuses() == []  # no ingest was started
        with pytest.raises(errdefs.AlreadyExists):
            meta.content.writer("ref", expected=digest)  # and again, now that it is ours
    assert meta.content.info(digest).labels == {"owner": "A"}


def test_commit_of_bytes_another_namespace_holds(meta: Metadata) -> None:
    digest = put(meta, b"same bytes")
    with namespaces.use("other"):
        # Without ``expected`` the writer opens; the commit finds the blob on disk and records
        # it here with the labels given (containerd succeeds: new in this namespace).
        assert put(meta, b"same bytes", {"k": "v"}) == digest
        assert meta.content.info(digest).labels == {"k": "v"}
    assert meta.content.info(digest).labels == {}


def test_labels_are_kept_per_namespace(meta: Metadata) -> None:
    digest = put(meta, b"labelled", {"a": "1", "b": "2"})
    with namespaces.use("other"), pytest.raises(errdefs.AlreadyExists):
        meta.content.writer("ref", expected=digest)

    before = meta.content.info(digest)
    got = meta.content.update(Info(digest, 0, labels={"a": "one", "c": "3"}), ["labels.a"])
    assert got.labels == {"a": "one", "b": "2"}
    assert got.updated_at >= before.updated_at and got.created_at == before.created_at
    got = meta.content.update(Info(digest, 0, labels={}), ["labels.b"])
    assert got.labels == {"a": "one"}
    got = meta.content.update(Info(digest, 0, labels={"only": "this"}))
    assert got.labels == {"only": "this"}  # no paths: replace them all
    assert meta.content.info(digest).labels == {"only": "this"}
    with pytest.raises(errdefs.InvalidArgument):
        meta.content.update(Info(digest, 0, labels={}), ["size"])

    with namespaces.use("other"):
        assert meta.content.info(digest).labels == {}
        meta.content.update(Info(digest, 0, labels={"theirs": "x"}), ["labels.theirs"])
        assert meta.content.info(digest).labels == {"theirs": "x"}
    assert meta.content.info(digest).labels == {"only": "this"}
    with pytest.raises(errdefs.NotFound):
        meta.content.update(Info(digest_of(b"nothing"), 0, labels={"a": "b"}))


def test_walk_filters_on_labels(meta: Metadata) -> None:
    a = put(meta, b"a", {"tier": "base", "containerd.io/gc.root": "x"})
    b = put(meta, b"bb", {"tier": "top"})
    c = put(meta, b"ccc")

    def walk(*filters: str) -> set[str]:
        return {i.digest for i in meta.content.walk(filters)}

    assert walk() == {a, b, c}
    assert walk("labels.tier==top") == {b}
    assert walk("labels.tier") == {a, b}
    assert walk('labels."containerd.io/gc.root"') == {a}
    assert walk("labels.tier!=top") == {a, c}
    assert walk("size==3") == {c}
    assert walk("labels.tier==base", f"digest=={c}") == {a, c}


def test_ingests_are_per_namespace(meta: Metadata) -> None:
    w = meta.content.writer("pull-1", total=3)
    w.write(b"abc")
    with namespaces.use("other"):
        assert meta.content.list_statuses() == []
        with pytest.raises(errdefs.NotFound):
            meta.content.status("pull-1")
        with pytest.raises(errdefs.NotFound):
            meta.content.abort("pull-1")
        with meta.content.writer("pull-1") as theirs:  # the same ref is theirs to use
            assert theirs.status().offset == 0
    assert [s.ref for s in meta.content.list_statuses()] == ["pull-1"]
    assert meta.content.status("pull-1").offset == 3
    w.close()
    meta.content.abort("pull-1")
    with namespaces.use("other"):
        assert [s.ref for s in meta.content.list_statuses()] == ["pull-1"]


def test_delete_forgets_the_blob_here_and_leaves_the_disk_to_gc(daemon: Daemon) -> None:
    meta = daemon.meta
    sub = daemon.events.subscribe(['topic=="/content/delete"'])
    digest = put(meta, b"doomed")
    meta.content.delete(digest)
    with pytest.raises(errdefs.NotFound):
        meta.content.info(digest)
    assert daemon.local.info(digest).size == len(b"doomed")  # the collector's job
    [env] = events_of(sub)
    assert (env.namespace, env.topic) == (NS, "/content/delete")
    assert env.message == content_pb2.ContentDelete(digest=digest)


def test_namespaces_come_into_being_on_first_write(meta: Metadata) -> None:
    assert [n.name for n in meta.namespaces.list()] == []
    put(meta, b"x")
    with namespaces.use("second"):
        meta.leases.create("l")
    assert [n.name for n in meta.namespaces.list()] == [NS, "second"]
    assert meta.namespaces.get(NS).labels == {}


# --- images -----------------------------------------------------------------------------------


def image(name: str, data: bytes = b"manifest", labels: dict[str, str] | None = None,
          media_type: str = MANIFEST) -> Image:
    return Image(name, Descriptor(media_type, digest_of(data), len(data)), dict(labels or {}))


def test_images_create_get_list(meta: Metadata) -> None:
    created = meta.images.create(image("docker.io/library/a:1", b"m-a", {"env": "prod"}))
    assert created.created_at > 0 and created.updated_at == created.created_at
    meta.images.create(image("docker.io/library/b:1", b"m-b", {"env": "dev", "team": "x"}))
    meta.images.create(image("docker.io/library/c:1", b"m-a", media_type=INDEX))

    got = meta.images.get("docker.io/library/a:1")
    assert got == created
    assert got.target == Descriptor(MANIFEST, digest_of(b"m-a"), 3)

    def names(*filters: str) -> list[str]:
        return [i.name for i in meta.images.list(filters)]

    assert names() == ["docker.io/library/a:1", "docker.io/library/b:1", "docker.io/library/c:1"]
    assert names("name==docker.io/library/b:1") == ["docker.io/library/b:1"]
    assert names("labels.env==prod") == ["docker.io/library/a:1"]
    assert names("labels.team") == ["docker.io/library/b:1"]
    assert names(f"target.digest=={digest_of(b'm-a')}") == [
        "docker.io/library/a:1", "docker.io/library/c:1"]
    assert names(f'target.mediatype=="{INDEX}"') == ["docker.io/library/c:1"]
    assert names("name~=b:1$", "labels.env==prod") == [
        "docker.io/library/a:1", "docker.io/library/b:1"]
    assert names("labels.env==prod,name~=c:1") == []
    with pytest.raises(errdefs.InvalidArgument):
        meta.images.list(["name=="])

    with pytest.raises(errdefs.AlreadyExists):
        meta.images.create(image("docker.io/library/a:1"))
    with pytest.raises(errdefs.NotFound):
        meta.images.get("docker.io/library/nope:1")
    with namespaces.use("other"):
        assert meta.images.list() == []
        with pytest.raises(errdefs.NotFound):
            meta.images.get("docker.io/library/a:1")
        meta.images.create(image("docker.io/library/a:1", b"theirs"))
    assert meta.images.get("docker.io/library/a:1").target.digest == digest_of(b"m-a")


@pytest.mark.parametrize("bad", [
    Image("", Descriptor(MANIFEST, digest_of(b"m"), 1)),
    Image("x", Descriptor("", digest_of(b"m"), 1)),
    Image("x", Descriptor(MANIFEST, "sha256:abc", 1)),
    Image("x", Descriptor(MANIFEST, digest_of(b"m"), -1)),
    Image("x", Descriptor(MANIFEST, digest_of(b"m"), 1), {"": "empty key"}),
    Image("x", Descriptor(MANIFEST, digest_of(b"m") + "\n", 1)),
], ids=["name", "media-type", "digest", "size", "label", "digest-newline"])
def test_image_create_rejects_invalid(meta: Metadata, bad: Image) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        meta.images.create(bad)
    assert meta.images.list() == []


def test_image_update_field_masks(meta: Metadata) -> None:
    name = "docker.io/library/a:1"
    created = meta.images.create(image(name, b"m1", {"keep": "1", "drop": "2"}))
    new_target = Descriptor(INDEX, digest_of(b"m2"), 2, {"note": "moved"})

    got = meta.images.update(Image(name, new_target, {"keep": "one", "extra": "3"}),
                             ["labels.keep"])
    assert got.labels == {"keep": "one", "drop": "2"}
    assert got.target == created.target  # only the named paths change
    assert got.created_at == created.created_at and got.updated_at >= created.updated_at

    got = meta.images.update(Image(name, new_target, {}), ["labels.drop"])
    assert got.labels == {"keep": "one"}

    got = meta.images.update(Image(name, new_target, {}), ["target"])
    assert got.target == new_target and got.labels == {"keep": "one"}

    got = meta.images.update(Image(name, created.target, {"all": "new"}))
    assert (got.target, got.labels) == (created.target, {"all": "new"})  # no paths: everything
    assert meta.images.get(name) == got

    for path in ("name", "created_at", "target.digest"):
        with pytest.raises(errdefs.InvalidArgument):
            meta.images.update(Image(name, new_target, {}), [path])
    with pytest.raises(errdefs.InvalidArgument):
        meta.images.update(Image(name, Descriptor(MANIFEST, "sha256:bad", 1)), ["target"])
    assert meta.images.get(name) == got
    with pytest.raises(errdefs.NotFound):
        meta.images.update(image("docker.io/library/nope:1"), ["labels.a"])


def test_image_update_annotations(meta: Metadata) -> None:
    target = Descriptor(MANIFEST, digest_of(b"m"), 1, {"a": "1"})
    meta.images.create(Image("img", target, {"l": "1"}))
    got = meta.images.update(
        Image("img", Descriptor(INDEX, digest_of(b"other"), 5, {"b": "2"})), ["annotations"])
    assert got.target == Descriptor(MANIFEST, digest_of(b"m"), 1, {"b": "2"})
    assert got.labels == {"l": "1"}


def test_image_update_one_annotation(meta: Metadata) -> None:
    target = Descriptor(MANIFEST, digest_of(b"m"), 1, {"a": "1", "b": "2"})
    meta.images.create(Image("img", target))
    got = meta.images.update(Image("img", Descriptor(MANIFEST, digest_of(b"m"), 1, {"a": "one"})),
                             ["annotations.a", "annotations.b"])
    assert got.target.annotations == {"a": "one"}


def test_image_delete(meta: Metadata) -> None:
    meta.images.create(image("a"))
    with namespaces.use("other"):
        meta.images.create(image("a"))
    meta.images.delete("a")
    with pytest.raises(errdefs.NotFound):
        meta.images.get("a")
    with pytest.raises(errdefs.NotFound):
        meta.images.delete("a")
    with namespaces.use("other"):
        assert meta.images.get("a").name == "a"


def test_image_events(daemon: Daemon) -> None:
    meta = daemon.meta
    sub = daemon.events.subscribe(["topic~=^/images/"])
    meta.images.create(image("a", labels={"k": "v"}))
    meta.images.update(image("a", labels={"k": "w"}), ["labels.k"])
    meta.images.delete("a")
    with namespaces.use("other"):
        meta.images.create(image("b"))
        # Failed calls publish nothing.
        with pytest.raises(errdefs.AlreadyExists):
            meta.images.create(image("b"))
        with pytest.raises(errdefs.NotFound):
            meta.images.delete("a")
        with pytest.raises(errdefs.NotFound):
            meta.images.update(image("a"), ["labels.k"])
    got = [(e.namespace, e.topic, e.message) for e in events_of(sub)]
    assert got == [
        (NS, "/images/create", image_pb2.ImageCreate(name="a", labels={"k": "v"})),
        (NS, "/images/update", image_pb2.ImageUpdate(name="a", labels={"k": "w"})),
        (NS, "/images/delete", image_pb2.ImageDelete(name="a")),
        ("other", "/images/create", image_pb2.ImageCreate(name="b")),
    ]


# --- namespaces -------------------------------------------------------------------------------


def _make_image(m: Metadata) -> Callable[[], None]:
    m.images.create(image("img"))
    return lambda: m.images.delete("img")


def _make_blob(m: Metadata) -> Callable[[], None]:
    digest = put(m, b"blob")
    return lambda: m.content.delete(digest)


def _make_snapshot(m: Metadata) -> Callable[[], None]:
    m.snapshotters["overlayfs"].prepare("snap")
    return lambda: m.snapshotters["overlayfs"].remove("snap")


def _make_lease(m: Metadata) -> Callable[[], None]:
    m.leases.create("lease")
    return lambda: m.leases.delete("lease")


@pytest.mark.parametrize(("make", "what"), [
    (_make_image, "images"), (_make_blob, "blobs"), (_make_snapshot, "snapshots"),
    (_make_lease, "leases"),
], ids=["images", "content", "snapshots", "leases"])
def test_namespace_delete_refused_while_it_owns_something(
        meta: Metadata, make: Callable[[Metadata], Callable[[], None]], what: str) -> None:
    meta.namespaces.create("doomed", {"team": "x"})
    with namespaces.use("doomed"):
        remove = make(meta)
    with pytest.raises(errdefs.FailedPrecondition, match=what):
        meta.namespaces.delete("doomed")
    assert meta.namespaces.get("doomed").labels == {"team": "x"}
    with namespaces.use("doomed"):
        remove()
    meta.namespaces.delete("doomed")
    with pytest.raises(errdefs.NotFound):
        meta.namespaces.get("doomed")
    with pytest.raises(errdefs.NotFound):
        meta.namespaces.delete("doomed")


def test_namespace_crud(meta: Metadata) -> None:
    meta.namespaces.create("a", {"k": "v"})
    with pytest.raises(errdefs.AlreadyExists):
        meta.namespaces.create("a")
    for bad in ("", "-a", "a b", "a/b", "x" * 77):
        with pytest.raises(errdefs.InvalidArgument):
            meta.namespaces.create(bad)
    got = meta.namespaces.update(Namespace("a", {"k": "w", "n": "1"}), ["labels.n"])
    assert got.labels == {"k": "v", "n": "1"}
    assert meta.namespaces.get("a").labels == {"k": "v", "n": "1"}
    assert [n.name for n in meta.namespaces.list()] == ["a"]


# --- snapshots --------------------------------------------------------------------------------


def test_snapshot_keys_are_per_namespace(daemon: Daemon) -> None:
    snaps = daemon.snapshots
    snaps.prepare("k", labels={"ns": "A"})
    with namespaces.use("other"):
        with pytest.raises(errdefs.NotFound):
            snaps.stat("k")
        assert list(snaps.walk()) == []
        snaps.prepare("k", labels={"ns": "B"})  # the same key, another snapshot
        assert snaps.stat("k").labels == {"ns": "B"}
        snaps.commit("K", "k")
        with pytest.raises(errdefs.NotFound):
            snaps.prepare("child", "base-of-A")  # A's snapshots are no parents here
    assert snaps.stat("k").labels == {"ns": "A"}  # untouched by B's commit of its "k"
    snaps.commit("base-of-A", "k")
    with namespaces.use("other"):
        assert [(i.name, i.kind) for i in snaps.walk()] == [("K", Kind.COMMITTED)]
        snaps.remove("K")
        with pytest.raises(errdefs.NotFound):
            snaps.remove("base-of-A")
    assert [(i.name, i.kind) for i in snaps.walk()] == [("base-of-A", Kind.COMMITTED)]
    # The backend holds every namespace's snapshots under keys of their own.
    [backend_key] = [i.name for i in daemon.backend.walk()]
    assert re.fullmatch(rf"{NS}/\d+/base-of-A", backend_key)


def test_snapshot_events(daemon: Daemon) -> None:
    sub = daemon.events.subscribe(["topic~=^/snapshot/"])
    daemon.snapshots.prepare("a")
    daemon.snapshots.commit("A", "a")
    daemon.snapshots.remove("A")
    assert [(e.namespace, e.topic) for e in events_of(sub)] == [
        (NS, "/snapshot/prepare"), (NS, "/snapshot/commit"), (NS, "/snapshot/remove")]


# --- leases -----------------------------------------------------------------------------------


def test_lease_create_list_filter_delete(meta: Metadata) -> None:
    one = meta.leases.create("one", {"purpose": "pull"})
    assert one.id == "one" and one.created_at > 0 and one.labels == {"purpose": "pull"}
    meta.leases.create("two", {"purpose": "push", "containerd.io/gc.flat": ""})
    generated = meta.leases.create()
    assert re.fullmatch(r"[0-9a-f]{32}", generated.id)
    with pytest.raises(errdefs.AlreadyExists):
        meta.leases.create("one")

    def ids(*filters: str) -> list[str]:
        return [lease.id for lease in meta.leases.list(filters)]

    assert ids() == sorted(["one", "two", generated.id])
    assert ids("id==one") == ["one"]
    assert ids("labels.purpose==push") == ["two"]
    assert ids('labels."containerd.io/gc.flat"') == ["two"]
    assert ids("labels.purpose") == ["one", "two"]
    assert ids("id==one", "labels.purpose==push") == ["one", "two"]
    with pytest.raises(errdefs.InvalidArgument):
        meta.leases.list(["id=="])
    assert [lease for lease in meta.leases.list(["id==one"])] == [one]

    with namespaces.use("other"):
        assert meta.leases.list() == []
        with pytest.raises(errdefs.NotFound):
            meta.leases.delete("one")
        meta.leases.create("one")  # ids are per namespace

    meta.leases.delete("one")
    with pytest.raises(errdefs.NotFound):
        meta.leases.delete("one")
    assert ids() == sorted(["two", generated.id])
    with namespaces.use("other"):
        assert [lease.id for lease in meta.leases.list()] == ["one"]


def test_lease_resources(meta: Metadata) -> None:
    meta.leases.create("l")
    digest = digest_of(b"x")
    resources = [Resource(digest, "content"), Resource("ingest-ref", "ingests"),
                 Resource("snap", "snapshots/overlayfs")]
    for r in resources:
        meta.leases.add_resource("l", r)
    meta.leases.add_resource("l", resources[0])  # adding twice is no error
    assert meta.leases.list_resources("l") == resources  # by type, then id

    meta.leases.delete_resource("l", resources[1])
    meta.leases.delete_resource("l", resources[1])  # nor is removing what is not there
    assert meta.leases.list_resources("l") == [resources[0], resources[2]]

    for bad in (Resource("x", "images"), Resource("x", "snapshots/"), Resource("x", "")):
        with pytest.raises(errdefs.InvalidArgument):
            meta.leases.add_resource("l", bad)
    for call in (meta.leases.add_resource, meta.leases.delete_resource):
        with pytest.raises(errdefs.NotFound):
            call("missing", resources[0])
    with pytest.raises(errdefs.NotFound):
        meta.leases.list_resources("missing")
    with namespaces.use("other"), pytest.raises(errdefs.NotFound):
        meta.leases.list_resources("l")

    meta.leases.delete("l")
    meta.leases.create("l")
    assert meta.leases.list_resources("l") == []  # a lease made again starts empty


def test_write_under_lease_adds_ingest_and_blob(meta: Metadata) -> None:
    meta.leases.create("pull")
    with leases.use("pull"):
        w = meta.content.writer("layer-0", total=5)
        assert meta.leases.list_resources("pull") == [Resource("layer-0", "ingests")]
        w.write(b"layer")
        digest = w.commit(5, digest_of(b"layer"))
        assert Resource(digest, "content") in meta.leases.list_resources("pull")
        # A blob that is already there is added too, though the writer does not open.
        other = put(meta, b"config")
    assert Resource(other, "content") in meta.leases.list_resources("pull")
    meta.leases.create("second")
    with leases.use("second"), pytest.raises(errdefs.AlreadyExists):
        meta.content.writer("again", expected=digest)
    assert meta.leases.list_resources("second") == [Resource(digest, "content")]


def test_commit_under_lease_trades_ingest_for_blob(meta: Metadata) -> None:
    meta.leases.create("pull")
    with leases.use("pull"):
        digest = put(meta, b"layer", ref="layer-0")
    assert meta.leases.list_resources("pull") == [Resource(digest, "content")]


def test_snapshots_under_lease(daemon: Daemon) -> None:
    meta = daemon.meta
    meta.leases.create("unpack")
    with leases.use("unpack"):
        daemon.snapshots.prepare("extract-1")
        daemon.snapshots.commit("layer-1", "extract-1")
        daemon.snapshots.view("look", "layer-1")
    got = {r.id for r in meta.leases.list_resources("unpack")}
    assert {"layer-1", "look"} <= got
    assert {r.type for r in meta.leases.list_resources("unpack")} == {"snapshots/overlayfs"}


def test_commit_under_lease_trades_active_key_for_name(daemon: Daemon) -> None:
    daemon.meta.leases.create("unpack")
    with leases.use("unpack"):
        daemon.snapshots.prepare("extract-1")
        daemon.snapshots.commit("layer-1", "extract-1")
    assert daemon.meta.leases.list_resources("unpack") == [
        Resource("layer-1", "snapshots/overlayfs")]


def test_missing_lease_refuses_writes(daemon: Daemon) -> None:
    meta = daemon.meta
    existing = put(meta, b"there")
    with namespaces.use("other"):
        meta.leases.create("elsewhere")  # a lease of another namespace is no lease here
    for lease_id in ("missing", "elsewhere"):
        with leases.use(lease_id):
            with pytest.raises(errdefs.NotFound, match=lease_id):
                meta.content.writer("ref")
            with pytest.raises(errdefs.NotFound):
                meta.content.writer("ref", expected=existing)
            with pytest.raises(errdefs.NotFound):
                daemon.snapshots.prepare("snap")
            with pytest.raises(errdefs.NotFound):
                daemon.snapshots.view("view")
    assert meta.content.list_statuses() == []
    with pytest.raises(errdefs.NotFound):
        daemon.snapshots.stat("snap")
    assert list(daemon.backend.walk()) == []  # the backend work was undone


# --- persistence ------------------------------------------------------------------------------


def test_everything_survives_a_restart(daemon: Daemon) -> None:
    meta = daemon.meta
    meta.namespaces.create("labelled", {"owner": "ops"})
    blob = put(meta, b"blob", {"k": "v"})
    with namespaces.use("other"), pytest.raises(errdefs.AlreadyExists):
        meta.content.writer("ref", expected=blob)
    created = meta.images.create(image("img", b"blob", {"a": "b"}))
    meta.leases.create("lease", {"containerd.io/gc.expire": "2999-01-01T00:00:00Z"})
    with leases.use("lease"):
        daemon.snapshots.prepare("a", labels={"l": "a"})
        daemon.snapshots.commit("A", "a", labels={"l": "A"})
        daemon.snapshots.prepare("b", "A")
        w = meta.content.writer("half", total=4)
    w.write(b"ha")
    w.close()
    snapshots = {i.name: i for i in daemon.snapshots.walk()}
    resources = meta.leases.list_resources("lease")
    [lease] = meta.leases.list()

    meta = daemon.restart()
    assert meta.namespaces.get("labelled").labels == {"owner": "ops"}
    assert {n.name for n in meta.namespaces.list()} == {NS, "other", "labelled"}
    assert meta.content.info(blob).labels == {"k": "v"}
    assert read_all(meta.content, blob) == b"blob"
    with namespaces.use("other"):
        assert meta.content.info(blob).labels == {}
    assert meta.images.get("img") == created
    assert meta.leases.list() == [lease]
    assert meta.leases.list_resources("lease") == resources
    assert {i.name: i for i in daemon.snapshots.walk()} == snapshots
    assert meta.content.status("half").offset == 2
    # New work after the restart does not meet what was there before.
    daemon.snapshots.prepare("c", "A")
    daemon.snapshots.remove("b")
    daemon.snapshots.prepare("b", "A")
    assert len({i.name for i in daemon.backend.walk()}) == 3
    with meta.content.writer("half", total=4) as resumed:
        resumed.write(b"lf")
        assert resumed.commit(4, digest_of(b"half")) == digest_of(b"half")
