"""``berth login`` and ``berth logout``: registry credentials in the caller's docker config.json
(``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``), which ``berth pull`` and
``berth push`` then send to berthd for that registry.

Login first proves the credentials: ``GET /v2/`` on the registry, answering its auth challenge
(basic, or a bearer token from its token server) with them, through the registry client of
:mod:`berth.remotes`. Nothing is stored when the registry rejects them. They are offered to the
registry's own challenge only, never to a host it redirects to (nor its token realm), and the
registry's answer is read with a bound.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from berth import errdefs
from berth.cli.state import console, err_console
from berth.remotes.dockerconfig import DockerConfig, normalize_host
from berth.remotes.hosts import HostsConfig

DEFAULT_REGISTRY = "docker.io"


def verify(host: str, username: str, secret: str, *, plain_http: bool = False) -> None:
    """Raise unless the registry ``host`` accepts the credentials (``username`` empty: an
    identity token)."""
    # Here, not at the top: every berth command loads this module, and the HTTP stack costs
    # each of them some 50 ms.
    from berth.remotes.auth import Authorizer
    from berth.remotes.errors import RedirectedUnauthorized
    from berth.remotes.session import RegistrySession, RetryPolicy, raise_for_status

    servers = [h for h in HostsConfig().with_plain_http(plain_http).hosts(host)
               if not h.is_mirror]
    if not servers:
        raise errdefs.InvalidArgument(
            f"the hosts configuration gives registry {host} no server to log in to")
    origin = servers[-1]

    def credentials(server: str) -> tuple[str, str] | None:
        # Only the registry being logged in to gets them: a host it redirects to (or whose
        # challenge names a token realm) must never see them.
        return (username, secret) if server == origin.host else None

    session = RegistrySession(Authorizer(credentials), retry=RetryPolicy(max_retries=1))
    try:
        resp = session.request("GET", origin, "/", target=f"registry {host}")
        raise_for_status(resp, f"registry {host}", origin.host)
    except errdefs.FailedPrecondition as err:
        # A host the registry redirected to never saw the credentials: its refusal says
        # nothing about them, so its own message stands.
        rejected = not isinstance(err, RedirectedUnauthorized)
        if rejected and str(err).startswith(("unauthorized", "denied")):
            who = f"user {username!r}" if username else "the identity token"
            raise errdefs.FailedPrecondition(
                f"login to {host} failed: the registry rejected the credentials of {who}"
            ) from None
        raise
    finally:
        session.close()


def _read_password_stdin() -> str:
    data = sys.stdin.read()
    return data.removesuffix("\n").removesuffix("\r")


def login(
    server: Annotated[str, typer.Argument(
        metavar="[HOST]", help="Registry host[:port] (default: docker.io).")] = DEFAULT_REGISTRY,
    username: Annotated[str | None, typer.Option("--username", "-u", help="User name.")] = None,
    password: Annotated[str | None, typer.Option(
        "--password", "-p", help="Password (visible to other users: prefer --password-stdin).",
    )] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
    plain_http: Annotated[bool, typer.Option(
        "--plain-http", help="Talk to the registry over HTTP (loopback hosts fall back to it "
        "by themselves).")] = False,
) -> None:
    """Log in to a registry: check the credentials with it, then save them for pull and push."""
    host = normalize_host(server)
    if password is not None and password_stdin:
        raise errdefs.InvalidArgument("--password and --password-stdin exclude each other")
    interactive = sys.stdin.isatty()
    if password_stdin:
        if not username:
            raise errdefs.InvalidArgument("--password-stdin needs --username")
        password = _read_password_stdin()
    elif password is not None:
        err_console.print("WARNING! Using --password on the command line is insecure; use "
                          "--password-stdin.")
    if not username:
        if not interactive:
            raise errdefs.InvalidArgument("no username: give --username (-u)")
        username = typer.prompt("Username")
    if password is None:
        if not interactive:
            raise errdefs.InvalidArgument("no password: give --password-stdin or --password")
        password = typer.prompt("Password", hide_input=True)
    if not password:
        raise errdefs.InvalidArgument("the password is empty")
    verify(host, username, password, plain_http=plain_http)
    config = DockerConfig()
    config.store(host, username, password)
    console.print(f"Login Succeeded (saved in {config.path})")


def logout(
    server: Annotated[str, typer.Argument(
        metavar="[HOST]", help="Registry host[:port] (default: docker.io).")] = DEFAULT_REGISTRY,
) -> None:
    """Forget the saved credentials for a registry."""
    host = normalize_host(server)
    config = DockerConfig()
    if config.remove(host):
        console.print(f"Removing login credentials for {host}")
    else:
        console.print(f"Not logged in to {host}")
