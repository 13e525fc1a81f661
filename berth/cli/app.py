"""``berth``: Berth's command line for people.

Global options go before the command: ``berth --address SOCK --namespace NS images``.
Errors are one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import datetime
import json
from typing import Annotated

import typer
from google.protobuf.empty_pb2 import Empty
from rich.console import Console
from rich.table import Table

from berth import errdefs
from berth.client import Client
from berth.plugin.config import DEFAULT_ADDRESS

app = typer.Typer(no_args_is_help=True, add_completion=True,
                  help="Berth: pull, store and run containers (talks to berthd).")
console = Console()
err_console = Console(stderr=True)


class _State:
    address: str = DEFAULT_ADDRESS
    namespace: str = "default"

    def client(self) -> Client:
        return Client(self.address, self.namespace)


state = _State()


@app.callback()
def main(
    address: Annotated[str, typer.Option("--address", "-a", envvar="BERTH_ADDRESS",
                                         help="berthd's socket")] = DEFAULT_ADDRESS,
    namespace: Annotated[str, typer.Option("--namespace", "-n", envvar="BERTH_NAMESPACE",
                                           help="namespace to work in")] = "default",
) -> None:
    state.address = address
    state.namespace = namespace


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    for unit, span in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= span:
            return f"{int(seconds // span)} {unit} ago"
    return "just now"


@app.command()
def version() -> None:
    """Show berth's and berthd's versions."""
    from berth import __version__

    client = state.client()
    server = client.call(client.version.Version, Empty())
    console.print(f"berth   {__version__}\nberthd  {server.version} ({server.revision})")


@app.command("images")
def images(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="names only")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """List images."""
    imgs = state.client().list_images()
    if quiet:
        for i in imgs:
            print(i.name)
        return
    if fmt == "json":
        print(json.dumps([{"name": i.name, "digest": i.target.digest, "size": i.target.size,
                           "media_type": i.target.media_type, "labels": dict(i.labels)}
                          for i in imgs], indent=2))
        return
    table = Table(box=None)
    for col in ("NAME", "DIGEST", "CREATED"):
        table.add_column(col)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    for i in imgs:
        table.add_row(i.name, i.target.digest[:19], human_age(now - i.created_at.seconds))
    console.print(table)


@app.command()
def rmi(names: list[str],
        sync: Annotated[bool, typer.Option(help="collect garbage before returning")] = False,
        ) -> None:
    """Remove images."""
    client = state.client()
    for name in names:
        client.delete_image(name, sync=sync)
        print(name)


def run(argv: list[str]) -> int:
    try:
        app(argv, standalone_mode=False)
    except errdefs.BerthError as err:
        err_console.print(f"[red]berth:[/red] {err}")
        return 1
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except typer.exceptions.TyperException as err:  # usage errors and the like
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"berth: {err.format_message()}")
        return int(err.exit_code)
    return 0
