"""The walking differ: an :class:`~berth.diff.diff.Applier` and
:class:`~berth.diff.diff.Comparer` that needs nothing but mounts (containerd's
``diff/walking`` with ``diff/apply``).

Applying picks the cheapest place to write, as containerd's ``apply_linux.go`` does:

* one overlay mount with an ``upperdir``: straight into the upperdir, whiteouts in overlay form,
  the lowerdirs as parents (so directories created in the upper copy their lower metadata);
* one writable bind mount: straight into its source, whiteouts as removals (the overlay
  snapshotter hands out a bind mount for a layer without parents);
* anything else: mounted on a temporary directory, whiteouts as removals.

In a user namespace, overlay whiteouts (mknod) are impossible, so the temporary mount is used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from berth import errdefs
from berth.diff import durable
from berth.diff.archive import DEFAULT_LIMITS, OVERLAY_OPAQUE_XATTR, LayerLimits, apply_tar
from berth.diff.compression import (
    GZIP,
    UNCOMPRESSED,
    ZSTD,
    CompressingWriter,
    DigestingReader,
    PrefetchReader,
    decompressed_reader,
)
from berth.diff.diff import BlobOpener, Comparison, LayerSink, Readable
from berth.diff.writediff import write_diff
from berth.mount import Mount, temp_mount
from berth.oci import image

__all__ = ["WalkingDiff", "layer_media_compression"]

log = logging.getLogger(__name__)

_APPLY_TYPES = {
    image.MEDIA_TYPE_LAYER: UNCOMPRESSED,
    image.MEDIA_TYPE_LAYER_GZIP: GZIP,
    image.MEDIA_TYPE_LAYER_ZSTD: ZSTD,
    image.MEDIA_TYPE_LAYER_NONDIST: UNCOMPRESSED,
    image.MEDIA_TYPE_LAYER_NONDIST_GZIP: GZIP,
    image.MEDIA_TYPE_LAYER_NONDIST_ZSTD: ZSTD,
    image.DOCKER_LAYER: UNCOMPRESSED,
    image.DOCKER_LAYER_GZIP: GZIP,
    image.DOCKER_LAYER_FOREIGN_GZIP: GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": UNCOMPRESSED,
}
_COMPARE_TYPES = {
    image.MEDIA_TYPE_LAYER: UNCOMPRESSED,
    image.MEDIA_TYPE_LAYER_GZIP: GZIP,
    image.MEDIA_TYPE_LAYER_ZSTD: ZSTD,
}
_USER_OPAQUE_XATTR = "user.overlay.opaque"


def layer_media_compression(media_type: str) -> str:
    """The compression of a layer media type this differ applies; ``NotImplementedByBerth``
    for any other (encrypted layers, configs...), so the caller can try another applier."""
    try:
        return _APPLY_TYPES[media_type]
    except KeyError:
        raise errdefs.NotImplementedByBerth(
            f"unsupported diff media type: {media_type}") from None


@functools.cache
def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except FileNotFoundError:
        return False


def _drain(stream: Readable) -> None:
    while stream.read(1 << 20):
        pass


class WalkingDiff:
    """Applies layers to, and computes layers from, any mounts this host can mount.

    ``prefetch`` decompresses and digests in a background thread while files are written.
    ``temp_dir`` is where temporary mount points are made (if None, where
    :func:`berth.mount.set_temp_location` said: ``<root>/tmpmounts`` in berthd).
    ``limits`` caps what one applied layer may hold (see :class:`LayerLimits`).
    ``sync``: an applied layer's files are on disk when apply returns (see
    :mod:`berth.diff.durable`), ready for the commit that follows.
    """

    def __init__(self, *, prefetch: bool = True, temp_dir: str | None = None,
                 limits: LayerLimits = DEFAULT_LIMITS, sync: bool = True) -> None:
        self._prefetch = prefetch
        self._temp_dir = temp_dir
        self.limits = limits
        self.sync = sync  # an applied layer's files on disk before apply returns (durable.py)

    # -- Applier -------------------------------------------------------------------------------

    def apply(self, desc: image.Descriptor, mounts: Sequence[Mount],
              open_blob: BlobOpener) -> image.Descriptor:
        return self._stream(desc, open_blob, lambda stream: self._apply(stream, mounts))

    def apply_upper(self, desc: image.Descriptor, upper: str, open_blob: BlobOpener,
                    made_parents: list[str]) -> image.Descriptor:
        """Apply ``desc`` as an overlay upper directory whose lower layers are not known yet
        (they are being unpacked at the same time): whiteouts take the overlay form, and the
        directories the layer had to make are listed in ``made_parents`` so that
        :func:`berth.diff.archive.adopt_parents` can finish them once the lowers exist."""
        if _in_user_namespace():
            raise errdefs.NotImplementedByBerth("detached overlay apply needs the host namespace")
        def apply(stream: Readable) -> None:
            apply_tar(stream, upper, overlay_whiteouts=True, made_parents=made_parents,
                      limits=self.limits)
            self._synced(upper)

        return self._stream(desc, open_blob, apply)

    def _stream(self, desc: image.Descriptor, open_blob: BlobOpener,
                apply: Callable[[Readable], object]) -> image.Descriptor:
        compression = layer_media_compression(desc.media_type)
        started = time.monotonic()
        blob: BinaryIO = open_blob(desc)
        try:
            decompressed = decompressed_reader(blob, compression)
            if self._prefetch:
                # The read-ahead thread only decompresses; this one hashes what it writes.
                with PrefetchReader(decompressed) as stream:
                    digesting = DigestingReader(stream)
                    apply(digesting)
                    _drain(digesting)
            else:
                digesting = DigestingReader(decompressed)
                apply(digesting)
                _drain(digesting)
        finally:
            blob.close()
        log.debug("applied %s (%s, %d bytes) in %.3fs", desc.digest, desc.media_type,
                  digesting.size, time.monotonic() - started)
        return image.Descriptor(image.MEDIA_TYPE_LAYER, digesting.digest, digesting.size)

    def _apply(self, stream: Readable, mounts: Sequence[Mount]) -> None:
        if len(mounts) == 1:
            m = mounts[0]
            upper = m.option("upperdir")
            if m.type == "overlay" and upper and not _in_user_namespace():
                lowers = m.option("lowerdir")
                opaque = (_USER_OPAQUE_XATTR if "userxattr" in m.options
                          else OVERLAY_OPAQUE_XATTR)
                apply_tar(stream, upper, overlay_whiteouts=True,
                          parents=lowers.split(":") if lowers else (), opaque_xattr=opaque,
                          limits=self.limits)
                self._synced(upper)
                return
            if _is_bind(m) and not m.readonly:
                apply_tar(stream, m.source, overlay_whiteouts=False,
                          skip_devices=_in_user_namespace(), limits=self.limits)
                self._synced(m.source)
                return
        with temp_mount(mounts, prefix="berth-apply-", parent=self._temp_dir) as root:
            apply_tar(stream, root, overlay_whiteouts=False, skip_devices=_in_user_namespace(),
                      limits=self.limits)
            self._synced(root)

    def _synced(self, directory: str) -> None:
        if self.sync:
            durable.sync_filesystem(directory)

    # -- Comparer ------------------------------------------------------------------------------

    def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], out: LayerSink, *,
                media_type: str = image.MEDIA_TYPE_LAYER_GZIP) -> Comparison:
        try:
            compression = _COMPARE_TYPES[media_type]
        except KeyError:
            raise errdefs.NotImplementedByBerth(
                f"unsupported diff media type: {media_type}") from None
        with self._read_only(lower) as lower_root, self._read_only(upper) as upper_root:
            if not upper_root:
                raise errdefs.InvalidArgument("compare needs upper mounts")
            writer = CompressingWriter(out, compression)
            write_diff(lower_root, upper_root, writer)
            writer.close()
        return Comparison(image.Descriptor(media_type, writer.digest, writer.size),
                          diff_id=writer.diff_id)

    @contextlib.contextmanager
    def _read_only(self, mounts: Sequence[Mount]) -> Iterator[str]:
        """A directory showing ``mounts``: read in place when that is the same thing (a bind
        mount, or an overlay of a single directory), else mounted read-only on a temp dir."""
        if not mounts:
            yield ""
            return
        view = [_read_only_mount(m) for m in mounts]
        if len(view) == 1 and _is_bind(view[0]):
            yield view[0].source
            return
        with temp_mount(view, prefix="berth-diff-", parent=self._temp_dir) as root:
            yield root


def _is_bind(m: Mount) -> bool:
    return m.type == "bind" or "bind" in m.options or "rbind" in m.options


def _read_only_mount(m: Mount) -> Mount:
    """``m`` made read-only: an overlay's upperdir becomes its top lowerdir (no workdir, so an
    upper that is also mounted elsewhere is not mounted twice for writing), and a single
    remaining directory becomes a bind mount of it."""
    if m.type == "overlay":
        layers = []
        if upper := m.option("upperdir"):
            layers.append(upper)
        if lowers := m.option("lowerdir"):
            layers.extend(lowers.split(":"))
        if len(layers) == 1:
            return Mount(type="bind", source=layers[0], options=("rbind", "ro"))
        kept = tuple(o for o in m.options if not o.startswith(
            ("upperdir=", "workdir=", "lowerdir=")) and o not in ("rw", "ro"))
        return Mount(type="overlay", source=m.source,
                     options=(*kept, "lowerdir=" + ":".join(layers), "ro"))
    return Mount(type=m.type, source=m.source,
                 options=(*(o for o in m.options if o not in ("rw", "ro")), "ro"), target=m.target)
