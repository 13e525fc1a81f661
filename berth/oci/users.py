"""Users and groups of an image: its ``/etc/passwd`` and ``/etc/group``, read safely, and the
user strings of the OCI image spec resolved against them (see berth.oci.spec for the rules).

The files are resolved *inside* the rootfs a caller passes (symlinks cannot lead out of it; see
:func:`berth.diff.rootpath.resolve_in_root`), opened without following a final symlink, and
must be regular files of at most :data:`MAX_ACCOUNT_FILE` bytes.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from berth import errdefs
from berth.diff.rootpath import clean_name, resolve_in_root

MAX_ACCOUNT_FILE = 4 << 20  # /etc/passwd or /etc/group larger than this is refused
_MAX_ID = (1 << 32) - 1
_NUMBER = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _read_account_file(rootfs: str, path: str) -> str | None:
    """The text of ``path`` (e.g. ``/etc/passwd``) resolved inside ``rootfs``; None if there is
    no such file. InvalidArgument for anything but a bounded regular file."""
    if not os.path.isabs(rootfs):
        raise errdefs.InvalidArgument(f"rootfs {rootfs!r} must be an absolute path")
    real = resolve_in_root(os.path.realpath(rootfs), clean_name(path, what="path"), name=path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # swapped for a symlink since it was resolved
            raise errdefs.InvalidArgument(
                f"the image's {path} changed while it was read; try again") from None
        raise errdefs.InvalidArgument(f"cannot read the image's {path}: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errdefs.InvalidArgument(f"the image's {path} is not a regular file")
        data = b""
        while len(data) <= MAX_ACCOUNT_FILE:
            chunk = os.read(fd, MAX_ACCOUNT_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_ACCOUNT_FILE:
            raise errdefs.InvalidArgument(
                f"the image's {path} is larger than {MAX_ACCOUNT_FILE} bytes")
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def _account_id(text: str) -> int | None:
    if not _NUMBER.match(text):
        return None
    value = int(text)
    return value if 0 <= value <= _MAX_ID else None


def _account_lines(text: str) -> list[list[str]]:
    lines = (line.strip() for line in text.splitlines())
    return [line.split(":") for line in lines if line and not line.startswith("#")]


def read_passwd(rootfs: str) -> list[PasswdEntry] | None:
    """The entries of ``rootfs``'s ``/etc/passwd`` in file order (malformed lines skipped), or
    None when it has none."""
    text = _read_account_file(rootfs, "/etc/passwd")
    if text is None:
        return None
    entries = []
    for fields in _account_lines(text):
        if len(fields) < 4:
            continue
        uid, gid = _account_id(fields[2]), _account_id(fields[3])
        if uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid))
    return entries


def read_group(rootfs: str) -> list[GroupEntry] | None:
    """The entries of ``rootfs``'s ``/etc/group`` in file order (malformed lines skipped), or
    None when it has none."""
    text = _read_account_file(rootfs, "/etc/group")
    if text is None:
        return None
    entries = []
    for fields in _account_lines(text):
        if len(fields) < 3:
            continue
        gid = _account_id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) \
            if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _numeric(part: str, user: str) -> int | None:
    """The id ``part`` names if it is a number (InvalidArgument if out of range), else None."""
    if not _NUMBER.match(part):
        return None
    value = _account_id(part)
    if value is None:
        raise errdefs.InvalidArgument(
            f"user {user!r}: id {part} is out of range (0 to {_MAX_ID})")
    return value


def _lookup_user(rootfs: str | None, name: str) -> PasswdEntry:
    entries = read_passwd(rootfs) if rootfs else None
    if entries is None:
        raise errdefs.NotFound(
            f"user {name!r} cannot be resolved: the image has no /etc/passwd "
            "(give a numeric uid instead)")
    for entry in entries:
        if entry.name == name:
            return entry
    raise errdefs.NotFound(f"user {name!r} not found in the image's /etc/passwd")


def _lookup_group(rootfs: str | None, name: str) -> int:
    entries = read_group(rootfs) if rootfs else None
    if entries is None:
        raise errdefs.NotFound(
            f"group {name!r} cannot be resolved: the image has no /etc/group "
            "(give a numeric gid instead)")
    for entry in entries:
        if entry.name == name:
            return entry.gid
    raise errdefs.NotFound(f"group {name!r} not found in the image's /etc/group")


def _primary_gid(rootfs: str | None, uid: int) -> int:
    for entry in (read_passwd(rootfs) if rootfs else None) or ():
        if entry.uid == uid:
            return entry.gid
    return 0


def resolve_user(user: str, rootfs: str | None) -> tuple[int, int]:
    """``(uid, gid)`` for an OCI image ``user`` string, names looked up under ``rootfs`` (None:
    no files to read, so only numeric ids resolve)."""
    parts = user.split(":")
    if len(parts) > 2 or not all(parts):
        raise errdefs.InvalidArgument(
            f"user {user!r} is invalid: use user, uid, user:group, uid:gid, uid:group or "
            "user:gid")
    uid = _numeric(parts[0], user)
    if len(parts) == 1:
        if uid is None:
            entry = _lookup_user(rootfs, parts[0])
            return entry.uid, entry.gid
        return uid, _primary_gid(rootfs, uid)
    gid = _numeric(parts[1], user)
    if uid is None:
        uid = _lookup_user(rootfs, parts[0]).uid
    if gid is None:
        gid = _lookup_group(rootfs, parts[1])
    return uid, gid


def supplementary_gids(user: str, rootfs: str | None) -> list[int]:
    """The gids of the ``/etc/group`` entries that list ``user`` (a name, or a uid looked up in
    ``/etc/passwd``) as a member, excluding a group named like the user."""
    if not rootfs:
        return []
    name = user
    if _NUMBER.match(user):
        uid = _account_id(user)
        found = [e for e in read_passwd(rootfs) or () if e.uid == uid]
        if not found:
            return []
        name = found[0].name
    return [g.gid for g in read_group(rootfs) or () if g.name != name and name in g.members]
