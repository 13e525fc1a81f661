"""Paths from a layer, bounded to the directory the layer is applied to.

Two rules, both from containerd:

* :func:`clean_name` normalises a member name lexically. Unlike containerd, which clamps ``..``
  at the root, a name whose ``..`` climbs above the root is refused: no honest tool writes one.
  A leading ``/`` is dropped (old tools wrote absolute names; GNU tar strips them too).
* :func:`resolve_in_root` follows the symlinks already on disk the way continuity's
  ``fs.RootPath`` does: an absolute target restarts at the root, ``..`` stops at the root, and
  at most 255 links are followed (more is a loop: refused).
"""

from __future__ import annotations

import os
import stat

from berth import errdefs

MAX_LINKS = 255


def shown(name: str) -> str:
    """``name`` quoted for a message, shortened in the middle if it is very long."""
    if len(name) > 160:
        name = name[:100] + "..." + name[-50:]
    return repr(name)


def clean_name(name: str, *, what: str = "layer entry") -> str:
    """``name`` relative to the root, without ``.``, ``..``, empty components or a leading
    slash; ``''`` means the root itself. InvalidArgument if it climbs out of the root or holds
    a NUL byte."""
    if "\0" in name:
        raise errdefs.InvalidArgument(f"{what} {shown(name)} contains a NUL byte")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise errdefs.InvalidArgument(f"{what} {shown(name)} escapes the root")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def resolve_in_root(root: str, rel: str, *, name: str = "") -> str:
    """The real location of ``root/rel`` with every symlink in it followed but kept inside
    ``root``. Components that do not exist are taken literally. The result is ``root`` or
    starts with ``root + '/'``. ``rel`` must come from :func:`clean_name` (``name`` is the
    original entry, for messages)."""
    if not rel:
        return root
    pending = rel.split("/")
    pending.reverse()
    resolved: list[str] = []
    current = root
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
                current = root + "".join("/" + p for p in resolved)
            continue
        candidate = current + "/" + part
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            # Not there (yet): the caller creates it, or reports the non-directory.
            resolved.append(part)
            current = candidate
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            current = candidate
            continue
        links += 1
        if links > MAX_LINKS:
            raise errdefs.InvalidArgument(
                f"layer entry {shown(name or rel)}: too many levels of symbolic links in the root")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved.clear()
            current = root
        parts = target.split("/")
        parts.reverse()
        pending.extend(parts)
    return current
