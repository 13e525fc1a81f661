"""What the CRI keeps of its pods and containers, in containerd 1.6's shapes.

A pod sandbox and a CRI container are each a container record in ``k8s.io``; the CRI's own
metadata rides on the record as an extension (``io.cri-containerd.sandbox.metadata`` or
``io.cri-containerd.container.metadata``, JSON ``{"Version":"v1","Metadata":{...}}`` with
containerd's field names), so ``ctr -n k8s.io containers info`` shows what it shows under
containerd and berthd finds everything again after a restart. A container's status (times, exit
code, reason) changes after the record is made and is kept, as containerd keeps it, in a JSON
file ``<cri root>/containers/<id>/status`` written atomically.

:class:`Index` holds them in memory (by id, with the name reservations that make RunPodSandbox
and CreateContainer refuse a second pod or container of the same name), guarded by one lock.
"""

from __future__ import annotations

import enum
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.containers import AnyValue

SANDBOX_EXTENSION = "io.cri-containerd.sandbox.metadata"
CONTAINER_EXTENSION = "io.cri-containerd.container.metadata"
SANDBOX_TYPE_URL = "github.com/containerd/cri/pkg/store/sandbox/Metadata"
CONTAINER_TYPE_URL = "github.com/containerd/cri/pkg/store/container/Metadata"
KIND_LABEL = "io.cri-containerd.kind"
KIND_SANDBOX = "sandbox"
KIND_CONTAINER = "container"
VERSION = "v1"


def config_json(msg: Any) -> Any:
    """A CRI config message as containerd stores it (proto field names, enums as numbers)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     use_integers_for_enums=True)


def config_from_json(doc: Any, msg: Any) -> Any:
    json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    return msg


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"
    UNKNOWN = "unknown"


@dataclass
class Sandbox:
    """A pod sandbox: its metadata (kept on its container record) and its live state."""

    id: str
    name: str
    config: pb.PodSandboxConfig
    runtime_handler: str = ""
    netns_path: str = ""
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    cni_result: dict[str, Any] | None = None
    created_at: int = 0
    state: SandboxState = SandboxState.UNKNOWN
    pid: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def extension(self) -> AnyValue:
        doc = {"Version": VERSION, "Metadata": {
            "ID": self.id, "Name": self.name, "Config": config_json(self.config),
            "NetNSPath": self.netns_path, "IP": self.ip,
            "AdditionalIPs": self.additional_ips or None, "RuntimeHandler": self.runtime_handler,
            "CNIResult": self.cni_result, "ProcessLabel": ""}}
        return AnyValue(SANDBOX_TYPE_URL, json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def from_extension(cls, value: AnyValue) -> Sandbox:
        meta = _metadata(value, "sandbox")
        return cls(id=str(meta["ID"]), name=str(meta["Name"]),
                   config=config_from_json(meta.get("Config") or {}, pb.PodSandboxConfig()),
                   runtime_handler=str(meta.get("RuntimeHandler") or ""),
                   netns_path=str(meta.get("NetNSPath") or ""), ip=str(meta.get("IP") or ""),
                   additional_ips=[str(i) for i in meta.get("AdditionalIPs") or []],
                   cni_result=meta.get("CNIResult"))

    @property
    def host_network(self) -> bool:
        options = self.config.linux.security_context.namespace_options
        return bool(options.network == pb.NODE)


@dataclass
class Status:
    """A container's status as containerd's ``status`` file keeps it (times in ns)."""

    pid: int = 0
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    removing: bool = False
    unknown: bool = False

    @property
    def state(self) -> pb.ContainerState:
        """The CRI ContainerState."""
        if self.unknown:
            return pb.CONTAINER_UNKNOWN
        if self.finished_at:
            return pb.CONTAINER_EXITED
        if self.started_at:
            return pb.CONTAINER_RUNNING
        if self.created_at:
            return pb.CONTAINER_CREATED
        return pb.CONTAINER_UNKNOWN

    def encode(self) -> bytes:
        doc = {"Version": VERSION, "Status": {
            "Pid": self.pid, "CreatedAt": self.created_at, "StartedAt": self.started_at,
            "FinishedAt": self.finished_at, "ExitCode": self.exit_code, "Reason": self.reason,
            "Message": self.message, "Removing": self.removing, "Unknown": self.unknown}}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Status:
        try:
            doc = json.loads(data)["Status"]
            return cls(pid=int(doc.get("Pid", 0)), created_at=int(doc.get("CreatedAt", 0)),
                       started_at=int(doc.get("StartedAt", 0)),
                       finished_at=int(doc.get("FinishedAt", 0)),
                       exit_code=int(doc.get("ExitCode", 0)), reason=str(doc.get("Reason", "")),
                       message=str(doc.get("Message", "")),
                       removing=bool(doc.get("Removing", False)),
                       unknown=bool(doc.get("Unknown", False)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise errdefs.InvalidArgument(f"container status file is malformed: {err}") from None


@dataclass
class Container:
    """A CRI container: its metadata (on its container record) and its status (a file)."""

    id: str
    name: str
    sandbox_id: str
    config: pb.ContainerConfig
    image_ref: str  # the image ID
    log_path: str = ""
    stop_signal: str = ""
    image_name: str = ""  # the reference the container was created from (its record's Image)
    status: Status = field(default_factory=Status)
    status_path: str = ""
    io_dir: str = ""  # FIFOs of a runtime whose output berthd copies (not Berth's shim)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def extension(self) -> AnyValue:
        doc = {"Version": VERSION, "Metadata": {
            "ID": self.id, "Name": self.name, "SandboxID": self.sandbox_id,
            "Config": config_json(self.config), "ImageRef": self.image_ref,
            "LogPath": self.log_path, "StopSignal": self.stop_signal, "ProcessLabel": ""}}
        return AnyValue(CONTAINER_TYPE_URL, json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def from_extension(cls, value: AnyValue) -> Container:
        meta = _metadata(value, "container")
        return cls(id=str(meta["ID"]), name=str(meta["Name"]),
                   sandbox_id=str(meta["SandboxID"]),
                   config=config_from_json(meta.get("Config") or {}, pb.ContainerConfig()),
                   image_ref=str(meta.get("ImageRef") or ""),
                   log_path=str(meta.get("LogPath") or ""),
                   stop_signal=str(meta.get("StopSignal") or ""))

    def save_status(self) -> None:
        """Write the status file (atomically: a crash leaves the old or the new one)."""
        tmp = self.status_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self.status.encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.status_path)

    def load_status(self) -> None:
        with open(self.status_path, "rb") as f:
            self.status = Status.decode(f.read())


def _metadata(value: AnyValue, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(value.value)
        meta = doc["Metadata"]
        if doc.get("Version") != VERSION or not isinstance(meta, dict):
            raise ValueError(f"version {doc.get('Version')!r}")
        return meta
    except (ValueError, KeyError, TypeError) as err:
        raise errdefs.InvalidArgument(f"{what} metadata extension is malformed: {err}") from None


def build_labels(config_labels: dict[str, str], image_config: dict[str, Any],
                 kind: str) -> dict[str, str]:
    """containerd's buildLabels: the image's labels, the CRI's over them, and the kind."""
    labels: dict[str, str] = {}
    inner = image_config.get("config") or {}
    image_labels = inner.get("Labels") if isinstance(inner, dict) else None
    if isinstance(image_labels, dict):
        labels.update({str(k): str(v) for k, v in image_labels.items()})
    labels.update(config_labels)
    labels[KIND_LABEL] = kind
    return labels


def sandbox_name(meta: pb.PodSandboxMetadata) -> str:
    """containerd's makeSandboxName: ``name_namespace_uid_attempt``."""
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def container_name(meta: pb.ContainerMetadata, sandbox: pb.PodSandboxMetadata) -> str:
    """containerd's makeContainerName: ``name_sandboxname_namespace_uid_attempt``."""
    return f"{meta.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_{meta.attempt}"


class Index:
    """The pods and containers berthd knows, and the names they hold."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._names: dict[str, str] = {}  # name -> id (pods and containers share the index)

    def reserve(self, name: str, id_: str) -> None:
        with self.lock:
            held = self._names.get(name)
            if held is not None and held != id_:
                raise errdefs.AlreadyExists(
                    f"failed to reserve name {name!r}: name {name!r} is reserved for {held!r}")
            self._names[name] = id_

    def release(self, name: str) -> None:
        with self.lock:
            self._names.pop(name, None)

    def sandbox(self, id_or_prefix: str) -> Sandbox:
        """A sandbox by id or unique id prefix (as containerd's truncindex); NotFound."""
        with self.lock:
            found: Sandbox = _find(self.sandboxes, id_or_prefix, "sandbox")
        return found

    def container(self, id_or_prefix: str) -> Container:
        with self.lock:
            found: Container = _find(self.containers, id_or_prefix, "container")
        return found

    def containers_of(self, sandbox_id: str) -> list[Container]:
        with self.lock:
            return [c for c in self.containers.values() if c.sandbox_id == sandbox_id]


def _find(items: dict[str, Any], key: str, what: str) -> Any:
    if key in items:
        return items[key]
    found = [v for k, v in items.items() if key and k.startswith(key)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise errdefs.InvalidArgument(f"{what} id prefix {key!r} is ambiguous")
    raise errdefs.NotFound(f"{what} {key!r} not found")
