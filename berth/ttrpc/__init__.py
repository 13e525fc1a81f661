"""ttrpc, containerd's RPC for shims: a sans-IO codec and a thin asyncio client and server.

* :mod:`berth.ttrpc.codec`: frames, envelopes and statuses as bytes, no I/O.
* :class:`Server`, :class:`RequestContext`: serve protobuf services over unix sockets.
* :class:`Client`, :class:`Stub`: call them from asyncio.
* :class:`SyncClient`, :class:`SyncStub`, :class:`BackgroundLoop`: call them from threads.
"""

from berth.ttrpc.client import BackgroundLoop, Client, Stub, SyncClient, SyncStub
from berth.ttrpc.codec import MAX_MESSAGE
from berth.ttrpc.server import RequestContext, Server

__all__ = [
    "MAX_MESSAGE",
    "BackgroundLoop",
    "Client",
    "RequestContext",
    "Server",
    "Stub",
    "SyncClient",
    "SyncStub",
]
