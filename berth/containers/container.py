"""The container record and the store that keeps it.

A container is metadata only: the OCI runtime spec to run, the runtime (shim) to run it with,
and the root filesystem, named as a snapshot key in a snapshotter. Nothing runs until a task is
created from it (see ``berth.runtime``); deleting a container never touches a running task's
processes, and the tasks service refuses to delete a container that still has one.

Lifecycle and contract of a :class:`Store` (per namespace, the request's one):

* ``create`` validates the record (:func:`validate`), stamps ``created_at == updated_at`` and
  fails with ``AlreadyExists`` for an id in use. The snapshot the container names need not exist:
  clients prepare it first (``ctr`` does, under a lease) and the store does not check it.
* ``update`` applies a field mask (see :data:`UPDATABLE`). With no paths, the mutable fields are
  replaced whole, and ``runtime.name`` and ``snapshotter``, which never change, must equal the
  stored ones. ``updated_at`` moves; ``created_at`` does not.
* ``delete`` removes the record (``NotFound`` if absent). From then on the container's snapshot is
  no longer a garbage-collection root: it is collected unless something else keeps it (a lease,
  ``containerd.io/gc.root``). ``ctr containers rm`` removes the snapshot itself first.
* While a container exists, its snapshot (``snapshotter``, ``snapshot_key``) and whatever its
  ``containerd.io/gc.ref.*`` labels name are kept by the collector. The image it was made from is
  *not* kept (as in containerd): the snapshot's parent chain is.

Values that travel as protobuf ``Any`` (runtime options, extensions, the spec) are kept as
:class:`AnyValue`, opaque bytes with their type URL; the spec is JSON (:func:`pack_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from berth import errdefs, identifiers, labels
from berth.oci.spec import SPEC_TYPE_URL, Spec

MAX_ID_LENGTH = identifiers.MAX_LENGTH

UPDATABLE = ("labels", "labels.<key>", "spec", "extensions", "extensions.<key>", "image",
             "snapshotkey")
"""Field paths an update may name (``snapshot_key`` is accepted for ``snapshotkey``)."""


@dataclass(frozen=True)
class AnyValue:
    """A protobuf ``Any``: the bytes of a message and the type URL that names it."""

    type_url: str
    value: bytes = b""


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime a task of the container runs under (``io.containerd.runc.v2``) and its
    options (for runc shims, ``containerd.runc.v1.Options``); ``options`` None when unset."""

    name: str
    options: AnyValue | None = None


@dataclass
class Container:
    id: str
    runtime: RuntimeInfo
    spec: AnyValue | None  # required: validate() refuses None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0
    # containerd 1.7 adds ``sandbox``; the 1.6 API that Berth serves has no such field.


class Store(Protocol):
    """Containers in the current namespace (see the module's contract)."""

    def get(self, container_id: str) -> Container: ...

    def list(self, filter_strings: Sequence[str] = ()) -> list[Container]:
        """Containers matching containerd filters over ``id``, ``image``, ``runtime.name``,
        ``snapshotter``, ``snapshotkey`` and ``labels.<key>``, ordered by id."""
        ...

    def create(self, container: Container) -> Container: ...

    def update(self, container: Container, fieldpaths: Sequence[str] = ()) -> Container: ...

    def delete(self, container_id: str) -> None: ...


def validate_id(container_id: str) -> str:
    """``container_id`` if it is a valid identifier, else InvalidArgument."""
    return identifiers.validate(container_id, "container id")


def validate(container: Container) -> None:
    """containerd's checks: a valid id, extension keys not empty, valid labels, a runtime name,
    a spec, and a snapshotter whenever a snapshot key is given. InvalidArgument otherwise."""
    validate_id(container.id)
    if any(not key for key in container.extensions):
        raise errdefs.InvalidArgument(
            f"container {container.id!r}: extension keys must not be empty")
    labels.validate(container.labels)
    if not container.runtime.name:
        raise errdefs.InvalidArgument(
            f"container {container.id!r}: the runtime name must be set "
            "(for example io.containerd.runc.v2)")
    if container.spec is None:
        raise errdefs.InvalidArgument(f"container {container.id!r}: the spec must be set")
    if container.snapshot_key and not container.snapshotter:
        raise errdefs.InvalidArgument(
            f"container {container.id!r}: a snapshotter must be set with the snapshot key "
            f"{container.snapshot_key!r}")


def pack_spec(spec: Mapping[str, Any]) -> AnyValue:
    """The spec as containerd clients send it: JSON under the runtime-spec type URL."""
    return AnyValue(SPEC_TYPE_URL, json.dumps(spec, separators=(",", ":")).encode())


def unpack_spec(value: AnyValue | None) -> Spec:
    """The spec a container holds, decoded; InvalidArgument if it is absent or not a JSON
    object."""
    if value is None:
        raise errdefs.InvalidArgument("the container has no spec")
    try:
        spec = json.loads(value.value)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errdefs.InvalidArgument(
            f"the container's spec ({value.type_url or 'no type URL'}) is not JSON: {err}"
        ) from None
    if not isinstance(spec, dict):
        raise errdefs.InvalidArgument("the container's spec is not a JSON object")
    return spec
