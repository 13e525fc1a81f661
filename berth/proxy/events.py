"""berthd's events over its Events service: subscribing (every namespace's events, as
containerd serves them) and publishing.

An event arrives as a :class:`berth.events.Envelope` holding the message's bytes and type
name; :func:`fields` decodes containerd's events into plain data for showing.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
from collections.abc import Generator, Sequence

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from berth.api.services.events.v1 import events_pb2 as pb
from berth.api.services.events.v1 import events_pb2_grpc
from berth.events import Envelope
from berth.proxy.connection import Connection
from berth.proxy.convert import from_timestamp

# The modules that define containerd's event messages (containerd.events.*).
EVENT_MODULES = ("container", "content", "image", "namespace", "snapshot", "task")
_loaded = False


def _load_event_types() -> None:
    global _loaded
    if not _loaded:
        for name in EVENT_MODULES:
            importlib.import_module(f"berth.api.events.{name}_pb2")
        _loaded = True


def fields(envelope: Envelope) -> dict[str, object]:
    """The event's fields as JSON-ready data (field names as in the API); an event of a type
    Berth does not know keeps its bytes (base64)."""
    _load_event_types()
    raw: dict[str, object] = {"type_url": envelope.type_url,
                              "value": base64.b64encode(envelope.value).decode()}
    name = envelope.type_url.rpartition("/")[2]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return raw
    msg: Message = message_factory.GetMessageClass(desc)()
    try:
        msg.ParseFromString(envelope.value)
    except DecodeError:
        return {**raw, "error": "undecodable"}
    data: dict[str, object] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return data


def _envelopes(stream: Generator[pb.Envelope, None, None]) -> Generator[Envelope, None, None]:
    with contextlib.closing(stream):
        for env in stream:
            yield Envelope(from_timestamp(env.timestamp), env.namespace, env.topic,
                           env.event.type_url, env.event.value)


class EventsProxy:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = events_pb2_grpc.EventsStub(conn.channel)

    def subscribe(self, filters: Sequence[str] = ()) -> Generator[Envelope, None, None]:
        """Events as they are published, of every namespace, matching any of ``filters``
        (``topic``, ``namespace``, ``event.<field>``), until the generator is closed. The call
        is made at once, not at the first ``next``."""
        return _envelopes(self._conn.stream(self._stub.Subscribe,
                                            pb.SubscribeRequest(filters=list(filters))))

    def publish(self, topic: str, type_url: str, value: bytes) -> None:
        """Publish the event message ``value`` (serialized; ``type_url`` names its type, e.g.
        ``containerd.events.NamespaceCreate``) under ``topic`` in the connection's namespace."""
        self._conn.call(self._stub.Publish, pb.PublishRequest(
            topic=topic, event=any_pb2.Any(type_url=type_url, value=value)))
