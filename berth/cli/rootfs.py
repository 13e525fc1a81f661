"""A read-only look into a container's root filesystem from the CLI, to resolve user and group
names against its ``/etc/passwd`` and ``/etc/group`` (as containerd's ``oci.WithUser`` does).

``berth`` runs as root on berthd's host, so it mounts the snapshot's mounts (from
Snapshots.Prepare or Snapshots.Mounts) on a private temporary directory for the time it takes
to read them, read-only: an overlay loses its upper and work directories (the upper one becomes
the top lower layer, as containerd's read-only temporary mounts do), so the same snapshot may be
mounted by a running container meanwhile, and nothing is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from berth import errdefs
from berth.mount import Mount, readonly, temp_mount


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount]) -> Iterator[str | None]:
    """The snapshot mounted read-only on a temporary directory for the block; None when
    there is nothing to mount."""
    if not mounts:
        yield None
        return
    try:
        cm = temp_mount([readonly(m) for m in mounts], prefix="berth-rootfs-")
        target = cm.__enter__()
    except errdefs.BerthError as err:
        raise errdefs.FailedPrecondition(
            f"cannot look into the container's root filesystem to resolve users and groups "
            f"({err}); berth must run as root on berthd's host for that") from None
    except PermissionError:
        raise errdefs.FailedPrecondition(
            "cannot look into the container's root filesystem to resolve users and groups: "
            "berth must run as root on berthd's host for that") from None
    try:
        yield target
    finally:
        cm.__exit__(None, None, None)
