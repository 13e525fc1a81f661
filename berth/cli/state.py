"""What every ``berth`` command shares: the global options, the consoles, the daemon client."""

from __future__ import annotations

from rich.console import Console

from berth import errdefs
from berth.client import Client
from berth.images import Image
from berth.plugin.config import DEFAULT_ADDRESS
from berth.remotes import reference

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """The global options (set by the app's callback before any command runs)."""

    def __init__(self) -> None:
        self.address = DEFAULT_ADDRESS
        self.namespace = "default"
        self.snapshotter = "overlayfs"
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None or (self._client.address, self._client.namespace) != (
                self.address, self.namespace):
            self._client = Client(self.address, self.namespace)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


state = State()


def find_image(client: Client, name: str) -> Image:
    """The image a person means by ``name``: the stored name itself, else its normalized form
    (``busybox`` finds ``docker.io/library/busybox:latest``)."""
    try:
        return client.images.get(name)
    except errdefs.NotFound:
        pass
    try:
        full = str(reference.parse(name))
    except errdefs.InvalidArgument:
        full = name
    if full != name:
        try:
            return client.images.get(full)
        except errdefs.NotFound:
            pass
    raise errdefs.NotFound(f"no such image: {name}")
