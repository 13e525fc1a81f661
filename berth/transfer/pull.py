"""Pulling an image into the daemon: resolve, fetch, verify, unpack, name.

The whole pull runs under a lease (expiring after a day), so nothing it stores can be collected
before the image that references it exists. Blobs are downloaded several at once, each verified
by the content store on commit (size and digest: a mismatch stores nothing), and each layer is
unpacked as soon as its blob is in (see :mod:`berth.transfer.unpack`). A pull that fails keeps its
lease, so what it verified survives for the next attempt, which resumes a half-downloaded blob
where it stopped (a Range request); the lease's expiry lets the collector reclaim it otherwise.

Two pulls at once share downloads: a blob being fetched by one waits for it in the other.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from berth import errdefs, heap, labels, leases, namespaces
from berth.content.content import Info, Provider, Store, Writer
from berth.diff.diff import Applier
from berth.images import Image, manifest, platforms
from berth.images import Store as ImageStore
from berth.images.platforms import Platform
from berth.leases import Manager as LeaseManager
from berth.oci.image import Descriptor
from berth.remotes import reference
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Fetcher, Resolver
from berth.snapshots.snapshotter import Snapshotter
from berth.transfer.progress import Progress as Progress
from berth.transfer.progress import ProgressFn as ProgressFn
from berth.transfer.unpack import Unpacker

log = logging.getLogger(__name__)

CHUNK = 256 << 10  # per read from the registry: more buys no speed, only peak memory


def _check_document_size(desc: Descriptor, kind: str) -> None:
    """InvalidArgument for a manifest, index or config too large to be read whole."""
    if desc.size > MAX_MANIFEST_SIZE:
        raise errdefs.InvalidArgument(
            f"{kind} {desc.digest} is {desc.size} bytes; more than {MAX_MANIFEST_SIZE} is "
            "refused")
FETCH_ATTEMPTS = 3
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source."


@dataclass
class PullOptions:
    platform: Platform = field(default_factory=platforms.host)
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = "overlayfs"
    max_concurrent: int = 3


class _Inflight:
    """Downloads under way, by digest: the second asker waits for the first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    @contextlib.contextmanager
    def claim(self, digest: str) -> Iterator[bool]:
        """Yields True for the one caller that should download; others wait, then get False."""
        with self._lock:
            event = self._events.get(digest)
            if event is None:
                event = self._events[digest] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            event.wait()
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._events[digest]
            event.set()


class Puller:
    """Pulls into ``content``, names images in ``images``, holds what it stores under a lease
    of ``leases``, and unpacks into ``snapshotters`` (by name) with ``applier``: in berthd the
    namespaced stores of the metadata database and the walking differ.

    ``shared`` is where blobs already on this host are, whatever namespace stored them (the
    local store under the metadata one). With it, a blob the host lacks is known missing
    without opening an ingest; without it (a store reached over the API), the content store's
    writer finds a shared blob, as containerd's pull does.
    """

    def __init__(self, content: Store, images: ImageStore, leases: LeaseManager,
                 snapshotters: Mapping[str, Snapshotter], applier: Applier, *,
                 shared: Provider | None = None) -> None:
        self.content = content
        self.images = images
        self.leases = leases
        self.snapshotters = snapshotters
        self.applier = applier
        self.shared = shared
        self._inflight = _Inflight()

    # -- content ---------------------------------------------------------------------------

    def _have(self, desc: Descriptor) -> bool:
        """Whether ``desc`` is stored (making a blob stored for another namespace visible
        here), with it added to the current lease.

        Opening a writer for a blob already on disk records it in this namespace and the lease
        and answers AlreadyExists (containerd's shared content policy), in one step that the
        collector cannot come between: a blob found here is never one it removes the moment
        after (an image deleted just before the same image is pulled again)."""
        if self.shared is not None:
            try:
                self.shared.info(desc.digest)
            except errdefs.NotFound:
                return False
        try:
            w = self.content.writer(f"pull-{desc.digest}", expected=desc.digest)
        except errdefs.AlreadyExists:
            return True
        w.close()  # not on this host (or collected meanwhile): download it
        return False

    def _download(self, fetcher: Fetcher, desc: Descriptor, kind: str,
                  progress: ProgressFn, labels: dict[str, str]) -> None:
        while True:
            with self._inflight.claim(desc.digest) as mine:
                if self._have(desc):
                    progress(Progress(kind, "exists", desc, desc.size, desc.size))
                    return
                if mine:
                    self._fetch_blob(fetcher, desc, kind, progress, labels)
                    return
            # Another pull was fetching it and did not store it (it failed): try ourselves.

    def _fetch_blob(self, fetcher: Fetcher, desc: Descriptor, kind: str,
                    progress: ProgressFn, labels: dict[str, str]) -> None:
        ref = f"pull-{desc.digest}"
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            w = self.content.writer(ref, total=desc.size, expected=desc.digest)
            try:
                offset = w.status().offset
                if offset > desc.size:
                    w.truncate(0)
                    offset = 0
                if offset < desc.size:
                    self._copy(fetcher, desc, kind, w, offset, progress)
                w.commit(desc.size, desc.digest, labels)
                progress(Progress(kind, "downloaded", desc, desc.size, desc.size))
                return
            except errdefs.AlreadyExists:
                progress(Progress(kind, "exists", desc, desc.size, desc.size))
                return
            except errdefs.Unavailable as err:
                if attempt == FETCH_ATTEMPTS:
                    raise
                log.warning("pull: %s: %s; resuming (attempt %d of %d)", desc.digest, err,
                            attempt + 1, FETCH_ATTEMPTS)
                time.sleep(0.2 * attempt)
            finally:
                w.close()

    def _copy(self, fetcher: Fetcher, desc: Descriptor, kind: str, w: Writer, offset: int,
              progress: ProgressFn) -> None:
        write = w.write
        progress(Progress(kind, "downloading", desc, offset, desc.size))
        last = time.monotonic()
        try:
            stream = fetcher.fetch(desc, offset)
        except (OSError, errdefs.Unavailable) as err:
            raise errdefs.Unavailable(f"fetching {desc.digest}: {err}") from err
        with stream:
            while True:
                try:
                    data = stream.read(CHUNK)
                except OSError as err:
                    raise errdefs.Unavailable(
                        f"download of {desc.digest} broke off at byte {offset}: {err}") from err
                if not data:
                    break
                write(data)
                offset += len(data)
                if offset > desc.size:
                    raise errdefs.InvalidArgument(
                        f"registry sent more than the {desc.size} bytes of {desc.digest}")
                now = time.monotonic()
                if now - last > 0.25:
                    progress(Progress(kind, "downloading", desc, offset, desc.size))
                    last = now
        if offset < desc.size:
            raise errdefs.Unavailable(
                f"download of {desc.digest} ended early at byte {offset} of {desc.size}")

    def _stored_document(self, fetcher: Fetcher, desc: Descriptor, kind: str,
                         labels: dict[str, str]) -> bytes:
        """A document read from the content store if it is there, else fetched, verified and
        stored with ``labels``; one fetch for concurrent pulls."""
        # Bounded before either: a stored blob is no more trusted than a fetched one (``ctr
        # images import`` stores whatever an archive holds, CVE-2023-25153's input).
        _check_document_size(desc, kind)
        while True:
            with self._inflight.claim(desc.digest) as mine:
                if self._have(desc):
                    with self.content.reader(desc.digest) as r:
                        _check_document_size(Descriptor(desc.media_type, desc.digest, r.size),
                                             kind)
                        return r.read_at(0, r.size)
                if mine:
                    data = self._document(fetcher, desc, kind)
                    self._store(desc, data, labels)
                    return data

    def _document(self, fetcher: Fetcher, desc: Descriptor, kind: str) -> bytes:
        """A manifest, index or config: read whole (bounded), verified, not yet stored."""
        _check_document_size(desc, kind)
        with fetcher.fetch(desc) as stream:
            data = stream.read(desc.size + 1)
        if len(data) != desc.size:
            raise errdefs.InvalidArgument(
                f"{kind} {desc.digest}: registry sent {len(data)} bytes, expected {desc.size}")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != desc.digest:
            raise errdefs.FailedPrecondition(
                f"{kind} digest mismatch: registry sent {actual}, expected {desc.digest}")
        return data

    def _store(self, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        """Store a verified document with its labels (setting them if it is stored already)."""
        try:
            w = self.content.writer(f"pull-{desc.digest}", total=desc.size,
                                       expected=desc.digest)
            try:
                w.truncate(0)
                w.write(data)
                w.commit(desc.size, desc.digest, labels)
            finally:
                w.close()
        except errdefs.AlreadyExists:
            if labels:
                self.content.update(Info(desc.digest, desc.size, labels=labels),
                                       [f"labels.{k}" for k in labels])

    # -- the graph -------------------------------------------------------------------------

    def pull(self, resolver: Resolver, ref: str, opts: PullOptions,
             progress: ProgressFn = lambda p: None) -> Image:
        """Pull ``ref`` into the current namespace and return the image record."""
        namespaces.current()
        progress(Progress("image", "resolving", name=ref))
        name, root = resolver.resolve(ref)
        fetcher = resolver.fetcher(name)
        parsed = reference.parse(name)
        # Where each blob came from, so a later push can mount it across repositories.
        source = {f"{LABEL_DISTRIBUTION_SOURCE}{parsed.host}": parsed.repository}
        expire = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
        lease = self.leases.create(labels={labels.GC_EXPIRE: expire.strftime(
            "%Y-%m-%dT%H:%M:%SZ")})
        try:
            with leases.use(lease.id):
                self._pull_root(fetcher, root, opts, progress, source)
                image = self._name(name, root)
        finally:
            heap.release()  # the layers' buffers are done with
        self.leases.delete(lease.id)
        progress(Progress("image", "done", root, name=name))
        return image

    def _pull_root(self, fetcher: Fetcher, root: Descriptor, opts: PullOptions,
                   progress: ProgressFn, source: dict[str, str]) -> None:
        if root.media_type in manifest.INDEX_TYPES:
            data = self._document(fetcher, root, "index")
            entries = manifest.parse_index(data)
            # Every child is labelled by its position in the index, as containerd labels them
            # (before choosing platforms): a label never changes meaning when the same index is
            # pulled again for another platform, so what an earlier pull stored stays referenced.
            refs = {f"{labels.GC_REF_CONTENT}.m.{i}": e.descriptor.digest
                    for i, e in enumerate(entries)}
            runs_here = {e.descriptor.digest for e in entries
                         if e.platform is not None and platforms.matches(opts.platform, e.platform)}
            if opts.all_platforms:
                chosen = [e.descriptor for e in manifest.unique_entries(entries)
                          if e.descriptor.media_type in manifest.MANIFEST_TYPES]
            else:
                chosen = [manifest.select_manifest(entries, opts.platform)]
            for desc in chosen:
                self._pull_manifest(fetcher, desc, opts, progress, source,
                                    unpack=opts.unpack and desc.digest in runs_here)
            self._store(root, data, {**refs, **source})
            progress(Progress("index", "done", root, root.size, root.size))
        elif root.media_type in manifest.MANIFEST_TYPES:
            self._pull_manifest(fetcher, root, opts, progress, source, unpack=opts.unpack)
        else:
            raise errdefs.InvalidArgument(
                f"{root.digest} has media type {root.media_type!r}, which is not an image "
                "manifest or index")

    def _pull_manifest(self, fetcher: Fetcher, desc: Descriptor, opts: PullOptions,
                       progress: ProgressFn, source: dict[str, str], *, unpack: bool) -> None:
        data = self._document(fetcher, desc, "manifest")
        m = manifest.parse_manifest(data)
        config_data = self._stored_document(fetcher, m.config, "config", source)
        config = manifest.parse_config(config_data)
        unpacker = None
        if unpack:
            sn = self.snapshotters.get(opts.snapshotter)
            if sn is None:
                raise errdefs.InvalidArgument(f"snapshotter {opts.snapshotter!r} is not loaded")
            unpacker = Unpacker(self.content, sn, self.applier, m.layers, config.diff_ids,
                                snapshotter_name=opts.snapshotter)
        def job(index: int, layer: Descriptor) -> None:
            self._download(fetcher, layer, "layer", progress, source)
            if unpacker is not None and unpacker.needed(index):
                if unpacker.parallel:
                    progress(Progress("layer", "extracting", layer, 0, layer.size))
                unpacker.extract(index)

        workers = max(1, min(opts.max_concurrent, len(m.layers)))
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
            try:
                for i, layer in enumerate(m.layers):
                    progress(Progress("layer", "waiting", layer, 0, layer.size))
                    # Jobs run in a copy of this context: the request's namespace and lease.
                    futures.append(pool.submit(contextvars.copy_context().run, job, i, layer))
                for i, (layer, fut) in enumerate(zip(m.layers, futures, strict=True)):
                    fut.result()
                    if unpacker is not None and unpacker.needed(i):
                        if not unpacker.parallel:
                            progress(Progress("layer", "extracting", layer, 0, layer.size))
                        unpacker.commit(i)
                    progress(Progress("layer", "done", layer, layer.size, layer.size))
            except BaseException:
                for fut in futures:
                    fut.cancel()
                for fut in futures:
                    if not fut.cancelled():
                        with contextlib.suppress(Exception):
                            fut.result()  # let running jobs finish before cleaning up
                if unpacker is not None:
                    unpacker.abort()
                raise
        config_labels = {}
        if unpacker is not None and unpacker.top:
            config_labels[f"{labels.GC_REF_SNAPSHOT}{opts.snapshotter}"] = unpacker.top
        if config_labels:
            self._store(m.config, config_data, config_labels)
        refs = {f"{labels.GC_REF_CONTENT}.config": m.config.digest}
        refs.update({f"{labels.GC_REF_CONTENT}.l.{i}": layer.digest
                     for i, layer in enumerate(m.layers)})
        self._store(desc, data, {**refs, **source})
        progress(Progress("manifest", "done", desc, desc.size, desc.size))

    def _name(self, name: str, target: Descriptor) -> Image:
        image = Image(name, target)
        try:
            return self.images.create(image)
        except errdefs.AlreadyExists:
            return self.images.update(image, ["target"])
