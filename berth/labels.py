"""Labels: free-form string maps on every object, and their field-mask updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from berth import errdefs

MAX_SIZE = 4096  # containerd's limit on len(key) + len(value)

# The garbage collector's labels (containerd's names; see berth.metadata.gc for what they mean).
GC_ROOT = "containerd.io/gc.root"
GC_REF_CONTENT = "containerd.io/gc.ref.content"
"""A blob's reference to another blob: this, or this + ``.<name>`` / ``/<name>``."""
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
"""A reference to a snapshot: this + ``<snapshotter>``, optionally + ``/<name>``."""
GC_EXPIRE = "containerd.io/gc.expire"
"""On a lease: when it stops protecting anything (RFC 3339)."""
GC_FLAT = "containerd.io/gc.flat"
"""On a lease: protect only its own resources, not what they reference."""
UNCOMPRESSED = "containerd.io/uncompressed"


def validate(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not key:
            raise errdefs.InvalidArgument("label key must not be empty")
        if len(key) + len(value) > MAX_SIZE:
            raise errdefs.InvalidArgument(
                f"label {key!r} is too long: key and value together must be at most "
                f"{MAX_SIZE} bytes"
            )


def apply_update(
    current: Mapping[str, str],
    new: Mapping[str, str],
    fieldpaths: Sequence[str],
    allowed: Sequence[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """Apply an update's label paths to ``current``.

    With no field paths the labels are replaced whole. ``labels`` replaces them whole,
    ``labels.<key>`` sets one key (or removes it when the new value is absent or empty). Other
    paths are returned for the caller, which must reject those not in ``allowed``.
    """
    if not fieldpaths:
        validate(new)
        return dict(new), []
    result = dict(current)
    rest: list[str] = []
    for path in fieldpaths:
        if path == "labels":
            result = dict(new)
        elif path.startswith("labels."):
            key = path[len("labels."):]
            value = new.get(key, "")
            if value:
                result[key] = value
            else:
                result.pop(key, None)
        elif path in allowed:
            rest.append(path)
        else:
            raise errdefs.InvalidArgument(f"cannot update {path!r}: field is not updatable")
    validate(result)
    return result, rest
