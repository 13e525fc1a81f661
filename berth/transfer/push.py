"""Pushing a stored image, and everything it references, to a registry.

Blobs go first (layers and configs, several at once), then manifests, then the index, so the
registry never holds a manifest whose blobs are missing. A blob the registry already has is
skipped; one that came from another repository of the same registry (the
``containerd.io/distribution.source.<host>`` label written at pull) is mounted across
repositories instead of uploaded, where the registry allows it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from berth import errdefs
from berth.content.content import Provider, open_stream
from berth.images import Image, manifest, platforms
from berth.images.platforms import Platform
from berth.oci.image import Descriptor
from berth.remotes import reference
from berth.remotes.remotes import MAX_MANIFEST_SIZE, Resolver
from berth.transfer.pull import LABEL_DISTRIBUTION_SOURCE, Progress, ProgressFn

log = logging.getLogger(__name__)


class ImagePusher:
    def __init__(self, content: Provider, max_concurrent: int = 3) -> None:
        self.content = content
        self.max_concurrent = max_concurrent

    def _read(self, desc: Descriptor) -> bytes:
        """A stored manifest or index, read whole to be parsed: bounded as a pulled one is,
        since what is stored may come from anywhere (``ctr images import`` of an archive)."""
        with self.content.reader(desc.digest) as r:
            if r.size > MAX_MANIFEST_SIZE:
                kind = "index" if desc.media_type in manifest.INDEX_TYPES else "manifest"
                raise errdefs.InvalidArgument(
                    f"{kind} {desc.digest} is {r.size} bytes; more than {MAX_MANIFEST_SIZE} is "
                    "refused")
            return r.read_at(0, r.size)

    def _opener(self, desc: Descriptor) -> Callable[[], BinaryIO]:
        return lambda: open_stream(self.content.reader(desc.digest))

    def push(self, resolver: Resolver, image: Image, target: str, *,
             platform: Platform | None = None, all_platforms: bool = False,
             progress: ProgressFn = lambda p: None) -> Descriptor:
        """Push ``image`` as ``target`` (a reference with a tag or digest)."""
        ref = reference.parse(target)
        pusher = resolver.pusher(str(ref))
        root = image.target
        manifests: list[Descriptor] = []
        blobs: dict[str, Descriptor] = {}
        if root.media_type in manifest.INDEX_TYPES:
            entries = manifest.unique_entries(manifest.parse_index(self._read(root)))
            want = platform or platforms.host()
            chosen = [e.descriptor for e in entries
                      if e.descriptor.media_type in manifest.MANIFEST_TYPES
                      and (all_platforms or (e.platform is not None
                                             and platforms.matches(want, e.platform)))]
            if not chosen:
                raise errdefs.NotFound(f"image {image.name} has no manifest for {want}")
            if not all_platforms and len(chosen) != len(entries):
                # A partial index would name manifests the registry lacks: push the one
                # manifest under the tag instead, as nerdctl does without --all-platforms.
                root = chosen[0]
                chosen = []
            manifests = chosen
        elif root.media_type not in manifest.MANIFEST_TYPES:
            raise errdefs.InvalidArgument(
                f"image {image.name} points at {root.media_type}, not a manifest or index")
        for m in manifests or [root]:
            parsed = manifest.parse_manifest(self._read(m))
            for d in (parsed.config, *parsed.layers):
                blobs[d.digest] = d
        for d in blobs.values():
            self.content.info(d.digest)  # NotFound now, not halfway through the upload

        def upload(desc: Descriptor) -> None:
            kind = "layer" if desc.media_type in manifest.LAYER_TYPES else "config"
            if pusher.exists(desc):
                progress(Progress(kind, "exists", desc, desc.size, desc.size))
                return
            source = self.content.info(desc.digest).labels.get(
                f"{LABEL_DISTRIBUTION_SOURCE}{ref.host}")
            if source and source != ref.repository and pusher.mount(desc, source):
                progress(Progress(kind, "mounted", desc, desc.size, desc.size))
                return
            progress(Progress(kind, "uploading", desc, 0, desc.size))
            pusher.push(desc, self._opener(desc))
            progress(Progress(kind, "done", desc, desc.size, desc.size))

        workers = max(1, min(self.max_concurrent, len(blobs)))
        with ThreadPoolExecutor(workers, thread_name_prefix="push") as pool:
            # Each job runs in a copy of this context: the request's namespace and lease.
            for fut in [pool.submit(contextvars.copy_context().run, upload, d)
                        for d in blobs.values()]:
                fut.result()
        for m in manifests:
            pusher.push(m, self._opener(m))
            progress(Progress("manifest", "done", m, m.size, m.size))
        pusher.push(root, self._opener(root), ref.tag or ref.digest)
        progress(Progress("image", "done", root, name=str(ref)))
        return root
