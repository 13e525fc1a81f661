"""A client for berthd's (containerd's) gRPC API, used by the ``berth`` CLI and by tests.

Every call carries the namespace header (and the lease header inside :meth:`Client.lease`);
failures come back as Berth's own errors (:func:`berth.errdefs.from_grpc_code`), so callers
never see raw gRPC exceptions, not even from a stream that breaks off half-way.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from berth import errdefs, leases, namespaces
from berth.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from berth.api.services.content.v1 import content_pb2, content_pb2_grpc
from berth.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
from berth.api.services.events.v1 import events_pb2, events_pb2_grpc
from berth.api.services.images.v1 import images_pb2, images_pb2_grpc
from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from berth.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from berth.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from berth.api.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from berth.api.services.version.v1 import version_pb2_grpc
from berth.api.types import descriptor_pb2, metrics_pb2, mount_pb2
from berth.api.types.task import task_pb2
from berth.plugin.config import DEFAULT_ADDRESS

T = TypeVar("T")

WRITE_CHUNK = 1 << 20
# Stands for "the client's default timeout" where None already means "no timeout".
_DEFAULT: Any = object()


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = namespaces.DEFAULT,
                 timeout: float = 30.0) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.lease_id: str | None = None
        self._channel = grpc.insecure_channel(f"unix:{address}")
        self.images = images_pb2_grpc.ImagesStub(self._channel)
        self.content = content_pb2_grpc.ContentStub(self._channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self._channel)
        self.diff = diff_pb2_grpc.DiffStub(self._channel)
        self.leases = leases_pb2_grpc.LeasesStub(self._channel)
        self.namespaces = namespace_pb2_grpc.NamespacesStub(self._channel)
        self.transfer = transfer_pb2_grpc.TransferStub(self._channel)
        self.version = version_pb2_grpc.VersionStub(self._channel)
        self.containers = containers_pb2_grpc.ContainersStub(self._channel)
        self.tasks = tasks_pb2_grpc.TasksStub(self._channel)
        self.events = events_pb2_grpc.EventsStub(self._channel)

    # -- calling -----------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = ((namespaces.GRPC_HEADER, self.namespace),)
        if self.lease_id:
            md += ((leases.GRPC_HEADER, self.lease_id),)
        return md

    def _error(self, err: grpc.RpcError) -> errdefs.BerthError:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        if code == grpc.StatusCode.UNAVAILABLE:
            # gRPC's own words for a connection that never was or broke; anything else
            # UNAVAILABLE came from berthd (a registry it could not reach, say).
            if details.startswith("failed to connect to all addresses"):
                reason = details.rpartition("error: ")[2] if "error: " in details else details
                return errdefs.Unavailable(
                    f"cannot reach berthd at {self.address} ({reason}): is it running? "
                    "(choose the socket with --address or BERTH_ADDRESS)")
            if details in ("Socket closed", "Connection reset by peer", "") or \
                    details.startswith("recvmsg:"):
                return errdefs.Unavailable(
                    f"lost the connection to berthd at {self.address} ({details or 'closed'})")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return errdefs.NotImplementedByBerth(
                f"berthd at {self.address} does not serve this call ({details}); is it older "
                "than this berth?")
        return errdefs.from_grpc_code(code, details or str(code))

    def call(self, method: Callable[..., T], request: Any, *, timeout: Any = _DEFAULT) -> T:
        """A unary call; ``timeout=None`` waits as long as it takes."""
        try:
            return method(request, timeout=self.timeout if timeout is _DEFAULT else timeout,
                          metadata=self._metadata())
        except grpc.RpcError as err:
            raise self._error(err) from None

    def stream(self, method: Callable[..., Iterable[T]], request: Any) -> Iterator[T]:
        """A server-streaming call (no deadline); closing the iterator cancels the call."""
        responses = method(request, metadata=self._metadata())
        try:
            yield from responses
        except grpc.RpcError as err:
            raise self._error(err) from None
        finally:
            cancel = getattr(responses, "cancel", None)
            if callable(cancel):
                cancel()

    # -- images ------------------------------------------------------------------------------

    def list_images(self, filters: list[str] | None = None) -> list[images_pb2.Image]:
        resp = self.call(self.images.List, images_pb2.ListImagesRequest(filters=filters or []))
        return list(resp.images)

    def get_image(self, name: str) -> images_pb2.Image:
        resp: images_pb2.GetImageResponse = self.call(
            self.images.Get, images_pb2.GetImageRequest(name=name))
        return resp.image

    def create_image(self, image: images_pb2.Image) -> images_pb2.Image:
        resp: images_pb2.CreateImageResponse = self.call(
            self.images.Create, images_pb2.CreateImageRequest(image=image))
        return resp.image

    def update_image(self, image: images_pb2.Image,
                     paths: Iterable[str] = ()) -> images_pb2.Image:
        req = images_pb2.UpdateImageRequest(image=image, update_mask=FieldMask(paths=list(paths)))
        resp: images_pb2.UpdateImageResponse = self.call(self.images.Update, req)
        return resp.image

    def put_image(self, name: str, target: descriptor_pb2.Descriptor) -> images_pb2.Image:
        """Create image ``name`` pointing at ``target``, or point the existing one there."""
        image = images_pb2.Image(name=name, target=target)
        try:
            return self.create_image(image)
        except errdefs.AlreadyExists:
            return self.update_image(image, ["target"])

    def delete_image(self, name: str, *, sync: bool = False) -> None:
        self.call(self.images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync),
                  timeout=None if sync else _DEFAULT)

    # -- content -----------------------------------------------------------------------------

    def content_info(self, digest: str) -> content_pb2.Info:
        resp: content_pb2.InfoResponse = self.call(
            self.content.Info, content_pb2.InfoRequest(digest=digest))
        return resp.info

    def has_content(self, digest: str) -> bool:
        try:
            self.content_info(digest)
        except errdefs.NotFound:
            return False
        return True

    def read_chunks(self, digest: str, size: int = -1) -> Iterator[bytes]:
        """The blob's bytes in chunks, checked against ``digest`` (and ``size`` when given) at
        the end, so a damaged store never passes silently into an archive."""
        h = hashlib.sha256() if digest.startswith("sha256:") else None
        n = 0
        for resp in self.stream(self.content.Read, content_pb2.ReadContentRequest(digest=digest)):
            if h is not None:
                h.update(resp.data)
            n += len(resp.data)
            yield resp.data
        if size >= 0 and n != size:
            raise errdefs.FailedPrecondition(
                f"blob {digest} has {n} bytes in the content store, expected {size}")
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise errdefs.FailedPrecondition(
                f"blob {digest} in the content store does not match its digest")

    def read_blob(self, digest: str, max_size: int) -> bytes:
        """A whole (small) blob: a manifest, index or config."""
        info = self.content_info(digest)
        if info.size > max_size:
            raise errdefs.InvalidArgument(
                f"blob {digest} is {info.size} bytes; documents over {max_size} are refused")
        return b"".join(self.read_chunks(digest, info.size))

    def set_content_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set (or, with an empty value, remove) the given labels, leaving the others."""
        if not labels:
            return
        req = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=FieldMask(paths=[f"labels.{k}" for k in labels]))
        self.call(self.content.Update, req)

    def write_blob(self, ref: str, chunks: Iterable[bytes], *, total: int, expected: str,
                   labels: Mapping[str, str] | None = None) -> None:
        """Store a blob through an ingest ``ref``; the daemon verifies ``total`` and
        ``expected`` on commit. A blob the store already has is not sent again (its labels
        are set), as containerd's content.WriteBlob does."""
        failure: list[BaseException] = []

        def requests() -> Iterator[content_pb2.WriteContentRequest]:
            offset = 0
            try:
                for data in chunks:
                    for i in range(0, len(data), WRITE_CHUNK):
                        piece = data[i:i + WRITE_CHUNK]
                        yield content_pb2.WriteContentRequest(
                            action=content_pb2.WRITE, ref=ref, total=total, expected=expected,
                            offset=offset, data=piece)
                        offset += len(piece)
            except BaseException as err:  # surfaced below instead of grpc's "iterating requests"
                failure.append(err)
                raise
            yield content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT, ref=ref, total=total, expected=expected,
                offset=offset, labels=dict(labels or {}))

        try:
            for _ in self.stream(self.content.Write, requests()):
                pass
        except errdefs.AlreadyExists:
            self.set_content_labels(expected, labels or {})
        except errdefs.BerthError:
            if failure:
                raise failure[0] from None
            raise

    # -- leases ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, expire: datetime.timedelta = datetime.timedelta(hours=1)) -> Iterator[str]:
        """Run the block under a new lease: what it stores or prepares is safe from the
        collector until the block ends (or, if this process dies, until ``expire``)."""
        until = datetime.datetime.now(datetime.UTC) + expire
        lease_id = f"berth-{uuid.uuid4().hex[:16]}"
        self.call(self.leases.Create, leases_pb2.CreateRequest(
            id=lease_id, labels={leases.LABEL_EXPIRE: until.strftime("%Y-%m-%dT%H:%M:%SZ")}))
        previous, self.lease_id = self.lease_id, lease_id
        try:
            yield lease_id
        finally:
            self.lease_id = previous
            with contextlib.suppress(errdefs.BerthError):
                self.call(self.leases.Delete, leases_pb2.DeleteRequest(id=lease_id))

    # -- snapshots and diffs -----------------------------------------------------------------

    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        try:
            self.call(self.snapshots.Stat,
                      snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key))
        except errdefs.NotFound:
            return False
        return True

    def prepare_snapshot(self, snapshotter: str, key: str,
                         parent: str = "") -> list[mount_pb2.Mount]:
        resp = self.call(self.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent))
        return list(resp.mounts)

    def commit_snapshot(self, snapshotter: str, name: str, key: str) -> None:
        self.call(self.snapshots.Commit, snapshots_pb2.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key), timeout=None)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.call(self.snapshots.Remove,
                  snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[mount_pb2.Mount]:
        resp = self.call(self.snapshots.Mounts,
                         snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key))
        return list(resp.mounts)

    def apply_diff(self, diff: descriptor_pb2.Descriptor,
                   mounts: Iterable[mount_pb2.Mount]) -> descriptor_pb2.Descriptor:
        """Apply a layer blob onto mounts; the answer's digest is the layer's diff ID."""
        req = diff_pb2.ApplyRequest(diff=diff, mounts=list(mounts))
        resp: diff_pb2.ApplyResponse = self.call(self.diff.Apply, req, timeout=None)
        return resp.applied

    # -- transfers ---------------------------------------------------------------------------

    def pull(self, request: transfer_pb2.PullRequest) -> Iterator[transfer_pb2.Progress]:
        return self.stream(self.transfer.Pull, request)

    def push(self, request: transfer_pb2.PushRequest) -> Iterator[transfer_pb2.Progress]:
        return self.stream(self.transfer.Push, request)

    # -- containers --------------------------------------------------------------------------

    def get_container(self, container_id: str) -> containers_pb2.Container:
        resp: containers_pb2.GetContainerResponse = self.call(
            self.containers.Get, containers_pb2.GetContainerRequest(id=container_id))
        return resp.container

    def list_containers(self, filters: Iterable[str] = ()) -> list[containers_pb2.Container]:
        resp = self.call(self.containers.List,
                         containers_pb2.ListContainersRequest(filters=list(filters)))
        return list(resp.containers)

    def create_container(self, container: containers_pb2.Container) -> containers_pb2.Container:
        resp: containers_pb2.CreateContainerResponse = self.call(
            self.containers.Create, containers_pb2.CreateContainerRequest(container=container))
        return resp.container

    def delete_container(self, container_id: str) -> None:
        self.call(self.containers.Delete, containers_pb2.DeleteContainerRequest(id=container_id))

    # -- tasks -------------------------------------------------------------------------------

    def create_task(self, container_id: str, *, stdin: str = "", stdout: str = "",
                    stderr: str = "", terminal: bool = False,
                    rootfs: Iterable[mount_pb2.Mount] = ()) -> int:
        """Create the container's task (its shim and init process, not yet started); the
        pid. Task creation starts a shim and runs the runtime: no client deadline."""
        resp: tasks_pb2.CreateTaskResponse = self.call(
            self.tasks.Create, tasks_pb2.CreateTaskRequest(
                container_id=container_id, rootfs=list(rootfs), stdin=stdin, stdout=stdout,
                stderr=stderr, terminal=terminal), timeout=None)
        return resp.pid

    def start_task(self, container_id: str, exec_id: str = "") -> int:
        resp: tasks_pb2.StartResponse = self.call(
            self.tasks.Start, tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id),
            timeout=None)
        return resp.pid

    def get_task(self, container_id: str, exec_id: str = "") -> task_pb2.Process:
        resp: tasks_pb2.GetResponse = self.call(
            self.tasks.Get, tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id))
        return resp.process

    def find_task(self, container_id: str) -> task_pb2.Process | None:
        """The container's task, or None when it has none."""
        try:
            return self.get_task(container_id)
        except errdefs.NotFound:
            return None

    def list_tasks(self, filter: str = "") -> list[task_pb2.Process]:
        resp = self.call(self.tasks.List, tasks_pb2.ListTasksRequest(filter=filter))
        return list(resp.tasks)

    def kill_task(self, container_id: str, signal: int, *, exec_id: str = "",
                  all: bool = False) -> None:
        self.call(self.tasks.Kill, tasks_pb2.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all))

    def delete_task(self, container_id: str) -> tasks_pb2.DeleteResponse:
        resp: tasks_pb2.DeleteResponse = self.call(
            self.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=container_id),
            timeout=None)
        return resp

    def wait_task(self, container_id: str, exec_id: str = "") -> Waiter:
        """Start waiting for a process to exit; call this *before* starting the process, so
        that an exit that comes quickly is not missed."""
        future = self.tasks.Wait.future(
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
            metadata=self._metadata())
        return Waiter(self, future)

    def exec_process(self, container_id: str, exec_id: str, spec: any_pb2.Any, *,
                     stdin: str = "", stdout: str = "", stderr: str = "",
                     terminal: bool = False) -> None:
        self.call(self.tasks.Exec, tasks_pb2.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, spec=spec, stdin=stdin, stdout=stdout,
            stderr=stderr, terminal=terminal), timeout=None)

    def delete_process(self, container_id: str, exec_id: str) -> tasks_pb2.DeleteResponse:
        resp: tasks_pb2.DeleteResponse = self.call(
            self.tasks.DeleteProcess,
            tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id))
        return resp

    def resize_pty(self, container_id: str, width: int, height: int,
                   exec_id: str = "") -> None:
        self.call(self.tasks.ResizePty, tasks_pb2.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height))

    def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        self.call(self.tasks.CloseIO, tasks_pb2.CloseIORequest(
            container_id=container_id, exec_id=exec_id, stdin=True))

    def task_metrics(self, filters: Iterable[str] = ()) -> list[metrics_pb2.Metric]:
        resp = self.call(self.tasks.Metrics, tasks_pb2.MetricsRequest(filters=list(filters)))
        return list(resp.metrics)

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, filters: Iterable[str] = ()) -> Iterator[events_pb2.Envelope]:
        """Events as they are published, until the iterator is closed."""
        return self.stream(self.events.Subscribe,
                           events_pb2.SubscribeRequest(filters=list(filters)))

    # -- namespaces --------------------------------------------------------------------------

    def list_namespaces(self) -> list[namespace_pb2.Namespace]:
        resp = self.call(self.namespaces.List, namespace_pb2.ListNamespacesRequest())
        return list(resp.namespaces)

    def close(self) -> None:
        self._channel.close()



class Waiter:
    """A Tasks.Wait call in flight (:meth:`Client.wait_task`)."""

    def __init__(self, client: Client, future: Any) -> None:
        self._client = client
        self._future = future

    def done(self) -> bool:
        return bool(self._future.done())

    def result(self, timeout: float | None = None) -> tasks_pb2.WaitResponse:
        """The exit; TimeoutError if it has not come within ``timeout`` seconds."""
        try:
            resp: tasks_pb2.WaitResponse = self._future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"the process did not exit within {timeout} s") from None
        except grpc.RpcError as err:
            raise self._client._error(err) from None
        return resp

    def cancel(self) -> None:
        self._future.cancel()
