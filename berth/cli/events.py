"""``berth events``: berthd's events as they happen, one line each (as ``ctr events`` prints
them): the time, the namespace, the topic and the event decoded as JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from berth.cli import humanize
from berth.cli.state import state


def events(
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="FILTER",
        help="containerd filter, e.g. 'topic~=/tasks/' or 'namespace==default' (repeatable: "
             "an event passes if any filter matches).")] = None,
) -> None:
    """Show events from berthd as they happen (all namespaces), until interrupted."""
    from berth.proxy.events import fields

    stream = state.client().events.subscribe(filters or [])
    try:
        for env in stream:
            when = humanize.rfc3339(env.timestamp) or "-"
            body = json.dumps(fields(env), separators=(",", ":"), sort_keys=True)
            print(f"{when} {env.namespace} {env.topic} {body}", flush=True)
    except KeyboardInterrupt:
        return
    finally:
        stream.close()
