"""Users and groups of an image: its ``/etc/passwd`` and ``/etc/group``, read safely, and the
user strings of the OCI image spec resolved against them (see berth.oci.spec for the rules).

The files are resolved *inside* the rootfs a caller passes (symlinks cannot lead out of it; see
:func:`berth.rootpath.resolve_in_root`), opened without following a final symlink, and
must be regular files of at most :data:`MAX_ACCOUNT_FILE` bytes.

Every uid and gid, whether written in a user string or read from those files, must lie in 0 to
:data:`MAX_ID` (2^31 - 1), or resolving fails with InvalidArgument before anything is made. No
id is ever wrapped (CVE-2024-40635: containerd converted a uid of 4294967296 to uint32 and ran
the container as root). The bound is 2^31 - 1, not the kernel's 2^32 - 2, because containerd's
``WithUser`` took that limit with its fix, from runc's ``libcontainer/user`` (which keeps ids in
int32 when it resolves a user): the same user string means the same thing, or fails the same way,
on both. Ids read from the image's files are bound the same way; containerd converted those to
uint32 unchecked too.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from berth import errdefs
from berth.rootpath import clean_name, resolve_in_root

MAX_ACCOUNT_FILE = 4 << 20  # /etc/passwd or /etc/group larger than this is refused
MAX_ID = (1 << 31) - 1  # the largest uid or gid (containerd's and runc's limit; see above)
_NUMBER = re.compile(r"^[+-]?[0-9]+$")
# A number of more significant digits than this (past int64, where Go's Atoi gives up) is kept
# as _HUGE: out of range whatever it says, and never handed to int() (slow on a long string,
# refused past Python's digit limit).
_MAX_DIGITS = 18
_HUGE = 1 << 64


@dataclass(frozen=True)
class PasswdEntry:
    """A line of ``/etc/passwd``. The ids are the numbers as written, which may be out of
    range: whoever uses one checks it (:func:`check_id`)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    """A line of ``/etc/group`` (``gid`` as written, like :class:`PasswdEntry`'s)."""

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


def _number(text: str) -> int | None:
    """The integer ``text`` writes (any sign; a huge one as ``MAX_ID + 1``), None if it is not
    a number."""
    if not _NUMBER.match(text):
        return None
    if len(text.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        return -_HUGE if text.startswith("-") else _HUGE
    return int(text)


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _id_text(value: int) -> str:
    return "of more than 18 digits" if abs(value) >= _HUGE else str(value)


def check_id(value: int, kind: str, *, where: str = "", whose: str = "") -> int:
    """``value`` if it is a valid uid or gid; otherwise InvalidArgument: "WHERE: KIND VALUE
    WHOSE is out of range (0 to MAX_ID)", e.g. "the image's /etc/passwd: uid 4294967296 of
    user 'evil' is out of range (0 to 2147483647)"."""
    if not 0 <= value <= MAX_ID:
        prefix = f"{where}: " if where else ""
        suffix = f" {whose}" if whose else ""
        raise errdefs.InvalidArgument(
            f"{prefix}{kind} {_id_text(value)}{suffix} is out of range (0 to {MAX_ID})")
    return value


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
        uid, gid = _number(fields[2]), _number(fields[3])
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
        gid = _number(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) \
            if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _numeric(part: str, user: str, kind: str) -> int | None:
    """The id ``part`` of ``user`` names if it is a number (InvalidArgument if out of range),
    else None (a name)."""
    value = _number(part)
    if value is None:
        return None
    return check_id(value, kind, where=f"user {_shown(user)}")


def _passwd_entry(entry: PasswdEntry) -> PasswdEntry:
    """``entry``, once both its ids are checked."""
    whose = f"of user {_shown(entry.name)}"
    check_id(entry.uid, "uid", where="the image's /etc/passwd", whose=whose)
    check_id(entry.gid, "gid", where="the image's /etc/passwd", whose=whose)
    return entry


def _group_gid(entry: GroupEntry) -> int:
    return check_id(entry.gid, "gid", where="the image's /etc/group",
                    whose=f"of group {_shown(entry.name)}")


def _lookup_user(rootfs: str | None, name: str) -> PasswdEntry:
    entries = read_passwd(rootfs) if rootfs else None
    if entries is None:
        raise errdefs.NotFound(
            f"user {name!r} cannot be resolved: the image has no /etc/passwd "
            "(give a numeric uid instead)")
    for entry in entries:
        if entry.name == name:  # the first entry of a name is the one (as libc's getpwnam)
            return _passwd_entry(entry)
    raise errdefs.NotFound(f"user {name!r} not found in the image's /etc/passwd")


def _lookup_group(rootfs: str | None, name: str) -> int:
    entries = read_group(rootfs) if rootfs else None
    if entries is None:
        raise errdefs.NotFound(
            f"group {name!r} cannot be resolved: the image has no /etc/group "
            "(give a numeric gid instead)")
    for entry in entries:
        if entry.name == name:
            return _group_gid(entry)
    raise errdefs.NotFound(f"group {name!r} not found in the image's /etc/group")


def _primary_gid(rootfs: str | None, uid: int) -> int:
    for entry in (read_passwd(rootfs) if rootfs else None) or ():
        if entry.uid == uid:
            return _passwd_entry(entry).gid
    return 0


def resolve_user(user: str, rootfs: str | None) -> tuple[int, int]:
    """``(uid, gid)`` for an OCI image ``user`` string, names looked up under ``rootfs`` (None:
    no files to read, so only numeric ids resolve). An id out of range, written or read, is
    InvalidArgument."""
    parts = user.split(":")
    if len(parts) > 2 or not all(parts):
        raise errdefs.InvalidArgument(
            f"user {user!r} is invalid: use user, uid, user:group, uid:gid, uid:group or "
            "user:gid")
    uid = _numeric(parts[0], user, "uid")
    if len(parts) == 1:
        if uid is None:
            entry = _lookup_user(rootfs, parts[0])
            return entry.uid, entry.gid
        return uid, _primary_gid(rootfs, uid)
    gid = _numeric(parts[1], user, "gid")
    if uid is None:
        uid = _lookup_user(rootfs, parts[0]).uid
    if gid is None:
        gid = _lookup_group(rootfs, parts[1])
    return uid, gid


def supplementary_gids(user: str, rootfs: str | None) -> list[int]:
    """The gids of the ``/etc/group`` entries that list ``user`` (a name, or a uid looked up in
    ``/etc/passwd``) as a member, excluding a group named like the user. A listed group whose
    gid is out of range is InvalidArgument (dropping it quietly would hide a broken image)."""
    if not rootfs:
        return []
    name = user
    uid = _number(user)
    if uid is not None:
        found = [e for e in read_passwd(rootfs) or () if e.uid == uid]
        if not found:
            return []
        name = found[0].name
    return [_group_gid(g) for g in read_group(rootfs) or ()
            if g.name != name and name in g.members]
