"""Unpacking a stored image into a snapshot chain from the client, as ``ctr images import`` does:
Snapshots.Prepare on the parent chain, Diff.Apply of the layer blob, Snapshots.Commit under the
layer's chain ID, one layer after the other.

Contract (the same as a pull's unpack in the daemon, :mod:`berth.images.unpack`):

* snapshots are named by chain ID, so layers another image already unpacked are skipped;
* a layer is committed only when the digest of its uncompressed bytes (what Diff.Apply reports)
  equals the config's diff ID; otherwise its active snapshot is removed and nothing is committed;
* afterwards the config blob carries ``containerd.io/gc.ref.snapshot.<snapshotter>`` = the top
  chain ID (the image keeps its snapshots from the collector) and each layer blob
  ``containerd.io/uncompressed`` = its diff ID.

Run it under a lease (:meth:`berth.client.Client.lease`) so nothing is collected half-way.
"""

from __future__ import annotations

import contextlib
import uuid

from berth import errdefs, labels
from berth.cli.documents import to_proto
from berth.client import Client
from berth.images.manifest import ImageConfig, Manifest, chain_ids


def unpack(client: Client, manifest: Manifest, config: ImageConfig, snapshotter: str) -> str:
    """Unpack the image's layers; the top chain ID ("" for an image without layers)."""
    if len(manifest.layers) != len(config.diff_ids):
        raise errdefs.InvalidArgument(
            f"image has {len(manifest.layers)} layers but its config lists "
            f"{len(config.diff_ids)} diff IDs")
    chain = chain_ids(config.diff_ids)
    parent = ""
    for layer, diff_id, name in zip(manifest.layers, config.diff_ids, chain, strict=True):
        if not client.snapshot_exists(snapshotter, name):
            key = f"extract-{uuid.uuid4().hex[:12]}-{name}"
            mounts = client.prepare_snapshot(snapshotter, key, parent)
            try:
                applied = client.apply_diff(to_proto(layer), mounts)
                if applied.digest != diff_id:
                    raise errdefs.InvalidArgument(
                        f"layer {layer.digest} unpacks to {applied.digest}, but the image "
                        f"config says its diff ID is {diff_id}: the image is corrupt")
                client.commit_snapshot(snapshotter, name, key)
            except errdefs.AlreadyExists:
                # Unpacked by someone else meanwhile; theirs is as good as ours.
                _discard(client, snapshotter, key)
            except BaseException:
                _discard(client, snapshotter, key)
                raise
        client.set_content_labels(layer.digest, {labels.UNCOMPRESSED: diff_id})
        parent = name
    if parent:
        client.set_content_labels(manifest.config.digest,
                                  {f"{labels.GC_REF_SNAPSHOT}{snapshotter}": parent})
    return parent


def _discard(client: Client, snapshotter: str, key: str) -> None:
    with contextlib.suppress(errdefs.BerthError):
        client.remove_snapshot(snapshotter, key)
