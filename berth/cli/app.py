"""``berth``: Berth's command line for people.

Global options go before the command: ``berth --address SOCK --namespace NS images``.
Errors are one clear line on stderr and exit status 1, never a traceback.

The commands live beside this module, one module per idea (:mod:`berth.cli.images`,
:mod:`berth.cli.transfer`, :mod:`berth.cli.login`); this one wires them into the app, also
under ``berth image ...`` as nerdctl does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from berth import errdefs
from berth.cli import containers, events, images, login, stats, transfer
from berth.cli import run as run_cmd
from berth.cli.state import console, err_console, state
from berth.plugin.config import DEFAULT_ADDRESS


def main(
    address: Annotated[str, typer.Option(
        "--address", "-a", envvar="BERTH_ADDRESS", help="berthd's socket.")] = DEFAULT_ADDRESS,
    namespace: Annotated[str, typer.Option(
        "--namespace", "-n", envvar="BERTH_NAMESPACE", help="Namespace to work in.")
    ] = "default",
    snapshotter: Annotated[str, typer.Option(
        "--snapshotter", envvar="BERTH_SNAPSHOTTER", help="Snapshotter to unpack images into.")
    ] = "overlayfs",
) -> None:
    state.address = address
    state.namespace = namespace
    state.snapshotter = snapshotter


def version() -> None:
    """Show berth's and berthd's versions."""
    from berth import __version__

    server = state.client().version()
    console.print(f"berth   {__version__}\nberthd  {server.version} ({server.revision})")


# (function, top-level name, names under `berth image` (the first one shown in its help))
_COMMANDS: list[tuple[Callable[..., Any], str, tuple[str, ...]]] = [
    (images.images, "images", ("ls", "list")),
    (images.rmi, "rmi", ("rm", "remove")),
    (images.tag, "tag", ("tag",)),
    (images.inspect, "inspect", ("inspect",)),
    (images.save, "save", ("save",)),
    (images.load, "load", ("load",)),
    (transfer.pull, "pull", ("pull",)),
    (transfer.push, "push", ("push",)),
    (login.login, "login", ()),
    (login.logout, "logout", ()),
]

# Commands that take a command line after their arguments stop reading options there
# (`berth run busybox ls -l`).
_COMMAND_LINE = {"allow_interspersed_args": False}
# (function, top-level name, names under `berth container`, context settings)
_CONTAINER_COMMANDS: list[tuple[Callable[..., Any], str, tuple[str, ...], dict[str, Any]]] = [
    (run_cmd.run, "run", ("run",), _COMMAND_LINE),
    (run_cmd.start, "start", ("start",), {}),
    (run_cmd.exec_, "exec", ("exec",), _COMMAND_LINE),
    (containers.ps, "ps", ("ls", "list", "ps"), {}),
    (containers.logs, "logs", ("logs",), {}),
    (containers.stop, "stop", ("stop",), {}),
    (containers.kill, "kill", ("kill",), {}),
    (containers.rm, "rm", ("rm", "remove"), {}),
    (stats.stats, "stats", ("stats",), {}),
    (events.events, "events", (), {}),
]
_NAMES = frozenset({"version", "image", "container", *(c[1] for c in _COMMANDS),
                    *(c[1] for c in _CONTAINER_COMMANDS)})
# The global options that take a value (see main).
_VALUE_OPTIONS = frozenset({"--address", "-a", "--namespace", "-n", "--snapshotter"})


def build(only: str | None = None) -> typer.Typer:
    """The app; with ``only`` (a top-level name), the global options and that command (or
    ``image``/``container`` group) alone. typer builds every command its app has on each run,
    reading their parameters from their annotations (about 100 ms for all of berth's), so
    :func:`run` builds only the one asked for."""
    app = typer.Typer(no_args_is_help=True, add_completion=only is None,
                      rich_markup_mode="markdown",
                      help="Berth: pull, store and run containers (talks to berthd).")
    app.callback()(main)
    if only in (None, "version"):
        app.command()(version)
    if only in (None, "image"):
        image_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                                help="Manage images.")
        app.add_typer(image_app, name="image")
        for fn, _name, aliases in _COMMANDS:
            for i, alias in enumerate(aliases):
                image_app.command(alias, hidden=i > 0)(fn)
    if only in (None, "container"):
        container_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                                    help="Manage containers.")
        app.add_typer(container_app, name="container")
        for fn, name, aliases, settings in _CONTAINER_COMMANDS:
            for i, alias in enumerate(aliases):
                container_app.command(alias, hidden=i > 0 and alias != name,
                                      context_settings=settings)(fn)
    for fn, name, _aliases in _COMMANDS:
        if only in (None, name):
            app.command(name)(fn)
    for fn, name, _aliases, settings in _CONTAINER_COMMANDS:
        if only in (None, name):
            app.command(name, context_settings=settings)(fn)
    return app


def command_named(argv: list[str]) -> str | None:
    """The top-level command ``argv`` names after the global options, if it is one of ours
    (None: the whole app is needed, for help, completion or a usage error)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _VALUE_OPTIONS:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return word if word in _NAMES else None
    return None


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv``; the exit status. Every failure becomes one line on stderr."""
    try:
        # Without standalone mode, a command's typer.Exit comes back as its code.
        app = build(command_named(argv))
        code = app(argv, standalone_mode=False, prog_name="berth")
        sys.stdout.flush()  # here, where a closed pipe is still ours to handle
    except errdefs.BerthError as err:
        err_console.print(f"[red]berth:[/red] {escape(str(err))}", soft_wrap=True)
        return 1
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    except typer.Abort:
        err_console.print("berth: aborted")
        return 1
    except KeyboardInterrupt:
        err_console.print("berth: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`berth images | head`): not an error worth a line.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        err_console.print(f"[red]berth:[/red]{escape(where)} {escape(err.strerror or str(err))}",
                          soft_wrap=True)
        return 1
    except typer.exceptions.TyperException as err:  # usage errors and the like
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"berth: {err.format_message()}")
        return int(err.exit_code)
    finally:
        state.close()
    return code if isinstance(code, int) else 0
