"""``berth events``: berthd's events as they happen, one line each (as ``ctr events`` prints
them): the time, the namespace, the topic and the event decoded as JSON."""

from __future__ import annotations

import json
import threading
from typing import Annotated

import typer

from berth import errdefs
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
    failed: list[Exception] = []

    def pump() -> None:
        try:
            for env in stream:
                when = humanize.rfc3339(env.timestamp) or "-"
                body = json.dumps(fields(env), separators=(",", ":"), sort_keys=True)
                print(f"{when} {env.namespace} {env.topic} {body}", flush=True)
        except (errdefs.BerthError, OSError) as err:  # raised again below, where run() maps it
            failed.append(err)

    # The stream is read in a thread, so that Ctrl-C interrupts this wait and never grpc's own
    # code (a KeyboardInterrupt raised inside it could leave its locks held, and the process
    # hung on its way out). Leaving closes the channel (run()), which ends the call and the
    # thread.
    reader = threading.Thread(target=pump, name="events", daemon=True)
    reader.start()
    try:
        while reader.is_alive():
            reader.join(0.2)
    except KeyboardInterrupt:
        return
    if failed:
        raise failed[0]
