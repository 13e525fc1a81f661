"""berthd's differ over its Diff service: an :class:`~berth.diff.diff.Applier` and a
:class:`~berth.diff.diff.Comparer`.

The daemon does the work on its own host, with its own content store (the one the call's
namespace sees), as containerd's remote differ does:

* :meth:`DiffProxy.apply` has the daemon read the layer blob from its store, which must hold
  it: ``open_blob`` is never called, and no layer byte travels through the caller;
* :meth:`DiffProxy.compare` has the daemon write the layer into its store (labelled with its
  diff ID, ``containerd.io/uncompressed``), then copies it to ``out`` as the contract asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from berth import errdefs
from berth.api.services.diff.v1 import diff_pb2 as pb
from berth.api.services.diff.v1 import diff_pb2_grpc
from berth.content.content import open_stream
from berth.diff.diff import LABEL_UNCOMPRESSED, Applier, BlobOpener, Comparer, Comparison, LayerSink
from berth.mount import Mount
from berth.oci.image import MEDIA_TYPE_LAYER_GZIP, Descriptor
from berth.proxy.connection import Connection
from berth.proxy.content import ContentProxy
from berth.proxy.convert import descriptor, from_descriptor
from berth.wire import mounts as to_mounts

COPY_CHUNK = 1 << 20


class DiffProxy(Applier, Comparer):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = diff_pb2_grpc.DiffStub(conn.channel)

    def apply(self, desc: Descriptor, mounts: Sequence[Mount],
              open_blob: BlobOpener | None = None) -> Descriptor:
        """Apply the layer blob ``desc`` of the daemon's content store onto ``mounts`` (paths
        on the daemon's host); the result names the uncompressed tar. ``open_blob`` is not
        used (see the module's doc)."""
        resp: pb.ApplyResponse = self._conn.call(
            self._stub.Apply, pb.ApplyRequest(diff=descriptor(desc), mounts=to_mounts(mounts)),
            timeout=None)
        return from_descriptor(resp.applied)

    def compare(self, lower: Sequence[Mount], upper: Sequence[Mount], out: LayerSink, *,
                media_type: str = MEDIA_TYPE_LAYER_GZIP) -> Comparison:
        desc = self.compare_into_store(lower, upper, media_type=media_type)
        content = ContentProxy(self._conn)
        diff_id = content.info(desc.digest).labels.get(LABEL_UNCOMPRESSED, "")
        if not diff_id:
            raise errdefs.Internal(
                f"berthd stored layer {desc.digest} without its {LABEL_UNCOMPRESSED} label")
        with open_stream(content.reader(desc.digest), COPY_CHUNK) as blob:
            while data := blob.read(COPY_CHUNK):
                out.write(data)
        return Comparison(desc, diff_id)

    def compare_into_store(self, lower: Sequence[Mount], upper: Sequence[Mount], *,
                           media_type: str = MEDIA_TYPE_LAYER_GZIP, ref: str = "",
                           labels: dict[str, str] | None = None) -> Descriptor:
        """The layer from ``lower`` to ``upper``, written into the daemon's content store
        (under ingest ``ref``, labelled with ``labels`` and its diff ID); its descriptor."""
        resp: pb.DiffResponse = self._conn.call(self._stub.Diff, pb.DiffRequest(
            left=to_mounts(lower), right=to_mounts(upper), media_type=media_type, ref=ref,
            labels=labels or {}), timeout=None)
        return from_descriptor(resp.diff)
