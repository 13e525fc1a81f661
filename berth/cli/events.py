"""``berth events``: berthd's events as they happen, one line each (as ``ctr events`` prints
them): the time, the namespace, the topic and the event decoded as JSON."""

from __future__ import annotations

import base64
import importlib
import json
from typing import Annotated, Any

import typer
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from berth.cli import humanize
from berth.cli.state import state
from berth.services.convert import from_timestamp

# The modules that define containerd's event messages (containerd.events.*).
EVENT_MODULES = ("container", "content", "image", "namespace", "snapshot", "task")
_loaded = False


def _load_event_types() -> None:
    global _loaded
    if not _loaded:
        for name in EVENT_MODULES:
            importlib.import_module(f"berth.api.events.{name}_pb2")
        _loaded = True


def decode(event: any_pb2.Any) -> dict[str, Any]:
    """The event as JSON-ready data; a type Berth does not know keeps its bytes (base64)."""
    _load_event_types()
    name = event.type_url.rpartition("/")[2]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return {"type_url": event.type_url, "value": base64.b64encode(event.value).decode()}
    msg: Message = message_factory.GetMessageClass(desc)()
    try:
        msg.ParseFromString(event.value)
    except DecodeError:
        return {"type_url": event.type_url, "value": base64.b64encode(event.value).decode(),
                "error": "undecodable"}
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return data


def events(
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="FILTER",
        help="containerd filter, e.g. 'topic~=/tasks/' or 'namespace==default' (repeatable: "
             "an event passes if any filter matches).")] = None,
) -> None:
    """Show events from berthd as they happen (all namespaces), until interrupted."""
    client = state.client()
    stream = client.subscribe(filters or [])
    try:
        for env in stream:
            when = humanize.rfc3339(from_timestamp(env.timestamp)) or "-"
            body = json.dumps(decode(env.event), separators=(",", ":"), sort_keys=True)
            print(f"{when} {env.namespace} {env.topic} {body}", flush=True)
    except KeyboardInterrupt:
        return
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
