"""The shim binary's command line as it parses it (the names are :mod:`berth.shimcontract`'s),
(the listening socket it hands the shim process besides is fd
:data:`berth.shimcontract.LISTEN_FD`).

Used by ``start`` (berth.shim.main), the fork server (berth.shim.zygote) and the shim process
(berth.shim.server), none of which imports another's module for it. Cheap to import (see
berth.shim.lean).
"""

from __future__ import annotations

from berth.shimcontract import BOOL_FLAGS, FLAG_VERSION, STRING_FLAGS


class Flags:
    """The command line. (Not a dataclass: importing dataclasses costs ``start`` 7 ms.)"""

    def __init__(self) -> None:
        self.namespace = ""
        self.id = ""
        self.address = ""
        self.publish_binary = ""
        self.bundle = ""
        self.socket = ""
        self.debug = False
        self.version = False
        self.action = ""


class UsageError(Exception):
    pass


def parse_flags(argv: list[str]) -> Flags:
    """Go ``flag`` syntax: ``-name value``, ``-name=value``, ``--name`` too; flags stop at the
    first non-flag word (the action)."""
    flags = Flags()
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        name, eq, value = word.lstrip("-").partition("=")
        if name in BOOL_FLAGS:
            on = value.lower() not in ("false", "0") if eq else True
            setattr(flags, "version" if name == FLAG_VERSION else name, on)
        elif name in STRING_FLAGS:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    rest = argv[i:]
    flags.action = rest[0] if rest else ""
    return flags
