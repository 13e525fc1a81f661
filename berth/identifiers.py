"""The identifier rule every name that can become a path or a key obeys: namespaces, container
and task ids, exec ids, lease ids.

An identifier is one to 76 characters: runs of ASCII letters and digits joined by single
``.``, ``_`` or ``-`` (containerd's ``identifiers.Validate``, the regular expression
``^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`` matched over the whole string). So no ``/``,
no ``..``, no leading dot, no whitespace and no trailing newline: an identifier is always
safe as one path component.

The check is written out by hand rather than with :mod:`re`: the shim validates the ids it is
given too, and ``re``'s ``$`` matches before a trailing newline, which is the very mistake this
module exists to prevent.
"""

from __future__ import annotations

from berth import errdefs

MAX_LENGTH = 76
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SEPARATORS = frozenset("._-")


def is_valid(value: str) -> bool:
    """Whether ``value`` is an identifier (see the module)."""
    if not value or len(value) > MAX_LENGTH:
        return False
    previous_separator = True  # no separator may start the identifier
    for char in value:
        if char in _ALNUM:
            previous_separator = False
        elif char in _SEPARATORS and not previous_separator:
            previous_separator = True
        else:
            return False
    return not previous_separator


def validate(value: str, what: str = "identifier") -> str:
    """``value`` if it is an identifier, else InvalidArgument naming ``what`` it was meant
    to be ("container id", "exec id", ...)."""
    if not value:
        raise errdefs.InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_LENGTH:
        raise errdefs.InvalidArgument(
            f"{what} {value!r} is longer than the maximum of {MAX_LENGTH} characters")
    if not is_valid(value):
        raise errdefs.InvalidArgument(
            f"{what} {value!r} is invalid: use letters, digits, '.', '_' and '-', starting and "
            "ending with a letter or digit, with no two of '.', '_', '-' in a row")
    return value
