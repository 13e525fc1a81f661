"""``berth images``, ``rmi``, ``tag``, ``inspect``, ``save`` and ``load``: the image store, as
nerdctl shows it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from berth import errdefs
from berth.cli import documents, humanize
from berth.cli.state import err_console, find_image, state
from berth.client import Client
from berth.images import Image, platforms
from berth.images.platforms import Platform
from berth.remotes import reference

FORMATS = ("table", "json")


def split_name(name: str) -> tuple[str, str]:
    """(repository, tag) of a stored name for the table; ``<none>`` when it has no tag."""
    repo = name.partition("@")[0]
    colon = repo.rfind(":")
    if colon > repo.rfind("/"):
        return repo[:colon], repo[colon + 1:]
    return repo, "<none>"


def _summary(client: Client, image: Image) -> dict[str, Any]:
    repo, tag = split_name(image.name)
    created = image.created_at
    row: dict[str, Any] = {
        "name": image.name, "repository": repo, "tag": tag, "digest": image.target.digest,
        "id": humanize.short_digest(image.target.digest), "created_at": humanize.rfc3339(created),
        "created": humanize.age_since(created), "platform": "", "size": None,
    }
    try:
        docs = documents.load(client, image.target)
    except errdefs.NotFound:
        return row  # content not (all) here: a partial pull, or a name kept after removal
    except errdefs.InvalidArgument as err:
        err_console.print(f"berth: {image.name}: {err}")
        return row
    row["platform"] = str(docs.config.platform)
    row["size"] = docs.size
    return row


def images(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only image names.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List images: REPOSITORY TAG IMAGE ID CREATED PLATFORM SIZE.

    SIZE is what the image's blobs take in the content store (config and compressed layers of
    this host's platform).
    """
    if fmt not in FORMATS:
        raise errdefs.InvalidArgument(f"--format must be one of {', '.join(FORMATS)}")
    client = state.client()
    imgs = client.images.list()
    if quiet:
        for i in imgs:
            print(i.name)
        return
    rows = [_summary(client, i) for i in imgs]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    humanize.table(
        ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "PLATFORM", "SIZE"),
        [(r["repository"], r["tag"], r["id"], r["created"], r["platform"] or "-",
          humanize.size(r["size"]) if r["size"] is not None else "-") for r in rows],
        sys.stdout)


def rmi(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Images to remove.")],
    sync: Annotated[bool, typer.Option(
        "--sync", help="Wait until the image's content and snapshots are collected.")] = False,
) -> None:
    """Remove images (busybox means docker.io/library/busybox:latest)."""
    client = state.client()
    failed = False
    for name in names:
        try:
            image = find_image(client, name)
            client.images.delete(image.name, sync=sync)
        except errdefs.NotFound as err:
            err_console.print(f"berth: {err}")
            failed = True
            continue
        print(image.name)
    if failed:
        raise typer.Exit(1)


def tag(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="An existing image.")],
    target: Annotated[str, typer.Argument(
        metavar="TARGET", help="The new name (normalized like a pull).")],
) -> None:
    """Give an image another name (an existing TARGET is moved to SOURCE)."""
    client = state.client()
    image = find_image(client, source)
    ref = reference.parse(target)
    if ref.digest and ref.digest != image.target.digest:
        raise errdefs.InvalidArgument(
            f"{target} names digest {ref.digest}, but {image.name} is {image.target.digest}")
    client.images.put(Image(str(ref), image.target, dict(image.labels)))


def inspect_image(client: Client, image: Image, want: Platform | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": image.name,
        "target": documents.descriptor_json(image.target),
        "labels": dict(image.labels),
        "created_at": humanize.rfc3339(image.created_at),
        "updated_at": humanize.rfc3339(image.updated_at),
    }
    out.update(documents.load(client, image.target, want).to_json())
    return out


def inspect(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Images to inspect.")],
    platform: Annotated[str | None, typer.Option(
        help="The manifest of this platform (os/arch[/variant]) from an index; default: "
             "this host's.")] = None,
) -> None:
    """Show images as JSON: the record, its manifest (and index) and config documents."""
    client = state.client()
    want = platforms.parse(platform) if platform else None
    out = [inspect_image(client, find_image(client, n), want) for n in names]
    print(json.dumps(out, indent=2))


def save(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Images to save.")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="File to write ('-' or none: standard output, if it is not a "
        "terminal).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="docker (for docker load, skopeo docker-archive:) or oci (an OCI "
        "image layout).")] = "docker",
    platform: Annotated[str | None, typer.Option(
        help="The platform to save from a multi-platform image (default: this host's).")] = None,
    all_platforms: Annotated[bool, typer.Option(
        "--all-platforms", help="Every platform of a multi-platform image (--format oci).")
    ] = False,
) -> None:
    """Save images into a tar archive."""
    from berth.cli import save as saving

    client = state.client()
    want = platforms.parse(platform) if platform else None
    images = [find_image(client, n) for n in names]
    export = saving.plan(client, images, fmt, want, all_platforms)
    if output in (None, "-"):
        if sys.stdout.isatty():
            raise errdefs.InvalidArgument(
                "refusing to write an archive to a terminal: use -o FILE or redirect the output")
        saving.save_to_stream(client, export, sys.stdout.buffer)
        return
    assert output is not None
    saving.save_to_file(client, export, Path(output))


def load(
    input_: Annotated[str | None, typer.Option(
        "--input", "-i", help="Archive to read ('-' or none: standard input).")] = None,
    platform: Annotated[str | None, typer.Option(
        help="The platform to unpack (default: this host's).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the image names.")] = False,
) -> None:
    """Load images from a tar archive (docker or OCI layout).

    Reads what docker save, berth save (either format), skopeo's docker-archive: and
    oci-archive:, and ctr images export write.

    The images are unpacked into the snapshotter (global --snapshotter, default overlayfs)
    right away, so a loaded image is ready to run like a pulled one.
    """
    from berth.cli import load as loading

    client = state.client()
    want = platforms.parse(platform) if platform else platforms.host()

    def report(line: str) -> None:
        err_console.print(f"berth: {line}")

    if input_ in (None, "-"):
        if sys.stdin.isatty():
            raise errdefs.InvalidArgument("no archive: use -i FILE or pipe one into berth load")
        names = loading.load_archive(client, sys.stdin.buffer, "standard input",
                                     snapshotter=state.snapshotter, want=want, report=report)
    else:
        assert input_ is not None
        try:
            f = open(input_, "rb")  # noqa: SIM115 - closed below, after a clear open error
        except OSError as err:
            raise errdefs.InvalidArgument(f"cannot read {input_}: {err.strerror}") from None
        with f:
            names = loading.load_archive(client, f, input_, snapshotter=state.snapshotter,
                                         want=want, report=report)
    for name in names:
        print(name if quiet else f"Loaded image: {name}")
