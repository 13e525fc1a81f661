"""``berth pull`` and ``berth push``: transfers run by berthd (Transfer service), watched here.

The daemon does the work; the CLI sends the caller's own registry credentials for the registry
named by the reference (from docker's config.json: :mod:`berth.remotes.dockerconfig`) and shows
the ``Progress`` stream (:mod:`berth.cli.progress`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from berth.cli.state import console, find_image, state
from berth.images import platforms
from berth.remotes import reference
from berth.remotes.dockerconfig import DockerConfig
from berth.transfer.progress import Progress

PlainHTTP = Annotated[bool, typer.Option(
    "--plain-http", help="Talk to the registry over HTTP instead of HTTPS.")]
PlatformOpt = Annotated[str | None, typer.Option(
    "--platform", help="os/arch[/variant] (default: this host's).")]
AllPlatforms = Annotated[bool, typer.Option(
    "--all-platforms", help="Every platform of an index, not only one.")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress; print only the image's NAME@DIGEST.")]


def _platform(spec: str | None) -> str:
    return str(platforms.parse(spec)) if spec else ""


def _auth(host: str) -> dict[str, tuple[str, str]]:
    """The caller's credentials for ``host``: (username, password), or ("", identity token)."""
    creds = DockerConfig().credentials(host)
    return {} if creds is None else {host: creds}


def _report(verb: str, final: Progress, quiet: bool) -> None:
    digest = final.descriptor.digest if final.descriptor is not None else ""
    if quiet:
        print(f"{final.name}@{digest}")
    else:
        console.print(f"{verb} {final.name} {digest}")


def pull(
    ref: Annotated[str, typer.Argument(
        metavar="REF", help="What to pull, e.g. busybox or host:5000/x/y:1.")],
    plain_http: PlainHTTP = False,
    platform: PlatformOpt = None,
    all_platforms: AllPlatforms = False,
    quiet: Quiet = False,
) -> None:
    """Pull an image from a registry and unpack it (credentials: see `berth login`)."""
    from berth.cli import progress  # rich.progress: only pull and push pay for it

    parsed = reference.parse(ref)
    updates = state.client().transfer.pull(
        str(parsed), platform=_platform(platform), all_platforms=all_platforms,
        plain_http=plain_http, auth=_auth(parsed.host), snapshotter=state.snapshotter)
    final = progress.follow(updates, progress.view_for(console, quiet=quiet))
    _report("Pulled", final, quiet)


def push(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The stored image to push.")],
    ref: Annotated[str | None, typer.Option(
        "--ref", help="Where to push it (default: the image's own name).")] = None,
    plain_http: PlainHTTP = False,
    platform: PlatformOpt = None,
    all_platforms: AllPlatforms = False,
    quiet: Quiet = False,
) -> None:
    """Push a stored image (and everything it references) to a registry."""
    from berth.cli import progress  # rich.progress: only pull and push pay for it

    client = state.client()
    image = find_image(client, name)
    target = reference.parse(ref or image.name)
    updates = client.transfer.push(
        image.name, ref=str(target) if ref else "", platform=_platform(platform),
        all_platforms=all_platforms, plain_http=plain_http, auth=_auth(target.host))
    final = progress.follow(updates, progress.view_for(console, quiet=quiet))
    _report("Pushed", final, quiet)
