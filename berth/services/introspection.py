"""containerd.services.introspection.v1.Introspection: the plugins and the server's identity."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Sequence

import grpc
from google.protobuf import empty_pb2

from berth import errdefs, filters
from berth.api.google.rpc import status_pb2
from berth.api.services.introspection.v1 import introspection_pb2 as pb
from berth.api.services.introspection.v1 import introspection_pb2_grpc
from berth.api.types import platform_pb2
from berth.plugin.registry import Plugin, Registry


def _adapt(p: Plugin, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        return "", False
    if path[0] == "type":
        return p.registration.type, True
    if path[0] == "id":
        return p.registration.id, True
    if path[0] == "capabilities":
        return ",".join(p.registration.capabilities), bool(p.registration.capabilities)
    return "", False


def _plugin(p: Plugin) -> pb.Plugin:
    reg = p.registration
    msg = pb.Plugin(
        type=reg.type, id=reg.id, requires=list(reg.requires), exports=p.exports,
        capabilities=list(reg.capabilities),
        platforms=[platform_pb2.Platform(os=o, architecture=a)
                   for o, a in (x.split("/", 1) for x in reg.platforms)],
    )
    if p.error is not None:
        msg.init_err.CopyFrom(status_pb2.Status(code=errdefs.to_grpc_code(p.error).value[0],
                                                message=str(p.error)))
    return msg


def server_uuid(root: str) -> str:
    """A stable identity for this daemon's root, made on first start."""
    path = os.path.join(root, "uuid")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        value = str(uuid.uuid4())
        os.makedirs(root, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(value)
        os.replace(tmp, path)
        return value


class IntrospectionService(introspection_pb2_grpc.IntrospectionServicer):
    def __init__(self, registry: Registry, uuid_: str) -> None:
        self.registry = registry
        self.uuid = uuid_

    def Plugins(self, request: pb.PluginsRequest,
                context: grpc.ServicerContext) -> pb.PluginsResponse:
        flt = filters.parse(request.filters)
        return pb.PluginsResponse(plugins=[
            _plugin(p) for p in self.registry.plugins()
            if flt.match(functools.partial(_adapt, p))])

    def Server(self, request: empty_pb2.Empty,
               context: grpc.ServicerContext) -> pb.ServerResponse:
        return pb.ServerResponse(uuid=self.uuid)
