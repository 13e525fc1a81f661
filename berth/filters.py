"""containerd's filter syntax: select objects by field paths.

A *filter* is a list of strings. The object matches if **any** string matches; a string matches if
**all** of its comma-separated selectors match. An empty list, or an empty string in the list,
matches everything.

Grammar of one string (spaces may precede a field, an operator or a value; not a "," or ".")::

    selectors := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := dquoted | [A-Za-z0-9_-]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+          (printable; not starting with . = ! ~ / | ")
    quoted    := dquoted | "/" ... "/" | "|" ... "|"   (the last two only after "~=")
    dquoted   := '"' ... '"'

Quoted strings use Go's escapes: ``\\a \\b \\f \\n \\r \\t \\v \\\\``, the quote character
itself, ``\\NNN`` (octal), ``\\xNN``, ``\\uNNNN`` and ``\\UNNNNNNNN``; any other backslash sequence
is an error. So a regular expression containing ``\\d`` must be written bare (``~=\\d+``), not
between slashes.

Meaning of a selector, given what the object's adaptor answers for the field path:

* ``fieldpath``: the field is present.
* ``fieldpath==value``: present and equal.
* ``fieldpath!=value``: not equal; an absent field counts as the empty string (containerd's rule:
  ``labels.a!=x`` matches objects without label ``a``).
* ``fieldpath~=regexp``: the regular expression matches somewhere in the value (unanchored; an
  absent field is the empty string). The syntax and matching are RE2's, as containerd's (Go's
  ``regexp`` is RE2): matching takes time linear in the value whatever the expression, so a
  filter cannot stall the server with backtracking (``(a+)+$``), and what RE2 lacks
  (backreferences, lookaround) is an error, as in containerd. Expressions and values are
  matched as bytes, as Go does.

Deviations from containerd, on purpose: a regular expression that does not compile is an
``InvalidArgument`` at parse time (containerd logs it and matches nothing), and so is one longer
than :data:`MAX_REGEX` bytes or one whose compiled program would exceed RE2's memory budget.

Field path examples: ``name``, ``labels.foo``, ``labels."containerd.io/gc.root"``. An adaptor
receives the components (``["labels", "containerd.io/gc.root"]``); an unquoted ``labels.a.b`` gives
``["labels", "a", "b"]``, which :func:`adapt_labels` reads as the label ``a.b``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from berth import errdefs

__all__ = ["MAX_REGEX", "Adaptor", "Filter", "adapt_labels", "match", "parse"]

MAX_REGEX = 4096
"""The longest ``~=`` expression accepted, in bytes: the most containerd lets a label hold (key
and value together), so any label value can still be matched literally. RE2 bounds the rest:
its compiled program must fit ``max_mem`` (8 MiB, RE2's default), and matching is linear."""


@functools.cache
def _re2() -> tuple[Any, Any]:
    """The re2 module and the options every expression is compiled with, loaded with the first
    ``~=`` (1 MiB of a daemon that never sees one)."""
    import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

    options = re2.Options()
    options.log_errors = False  # the error reaches the caller; RE2 would also print it to stderr
    options.never_capture = True  # only "does it match" is asked: no groups to keep
    return re2, options

Adaptor = Callable[[Sequence[str]], tuple[str, bool]]
"""Answers ``(value, present)`` for a field path of the object being matched."""


class Filter(Protocol):
    def match(self, adaptor: Adaptor) -> bool:
        """Whether the object behind ``adaptor`` is selected."""
        ...


def parse(filters: Sequence[str]) -> Filter:
    """Parse a filter list (OR of its strings). Raises ``InvalidArgument`` on a syntax error, with
    a message that points at the offending character."""
    parsed: list[Filter] = [_ALWAYS if text == "" else _Parser(text).parse() for text in filters]
    if not parsed or any(f is _ALWAYS for f in parsed):
        return _ALWAYS  # an empty string matches everything, so the OR does too
    return parsed[0] if len(parsed) == 1 else _Any(tuple(parsed))


def match(filters: Sequence[str], adaptor: Adaptor) -> bool:
    """``parse(filters).match(adaptor)``; parse once and reuse the filter when matching many."""
    return parse(filters).match(adaptor)


def adapt_labels(labels: Mapping[str, str], fieldpath: Sequence[str]) -> tuple[str, bool]:
    """Answer a ``labels.<key>`` field path from ``labels``.

    ``fieldpath`` is the whole path an adaptor received, starting with ``"labels"``. The key is
    the remaining components joined with ``.`` (containerd's rule), so ``labels.a.b`` and
    ``labels."a.b"`` both select the label ``a.b``. A bare ``labels`` is absent.
    """
    if not fieldpath or fieldpath[0] != "labels":
        raise ValueError(f"adapt_labels needs a field path starting with 'labels', got {fieldpath}")
    if len(fieldpath) < 2:
        return "", False
    key = ".".join(fieldpath[1:])
    if key in labels:
        return labels[key], True
    return "", False


# --- the matchers -------------------------------------------------------------------------------


class _Always:
    def match(self, adaptor: Adaptor) -> bool:
        return True


_ALWAYS = _Always()


@dataclass(frozen=True)
class _Any:
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class _All:
    selectors: tuple[_Selector, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(s.match(adaptor) for s in self.selectors)


class _Op(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True)
class _Selector:
    fieldpath: tuple[str, ...]
    op: _Op
    value: str = ""
    regex: Any = None  # a compiled re2 expression (over UTF-8 bytes), for MATCHES only

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.op is _Op.PRESENT:
            return present
        if self.op is _Op.EQUAL:
            return present and value == self.value
        if self.op is _Op.NOT_EQUAL:
            return value != self.value
        assert self.regex is not None  # set by the parser for every MATCHES selector
        # surrogateescape: a value holding bytes that are not UTF-8 is matched as those bytes.
        return self.regex.search(value.encode("utf-8", "surrogateescape")) is not None


# --- the scanner --------------------------------------------------------------------------------


class _Kind(enum.Enum):
    EOF = "end of input"
    FIELD = "field"
    VALUE = "value"
    QUOTED = "quoted"
    SEPARATOR = "separator"
    OPERATOR = "operator"
    ILLEGAL = "illegal"
    OTHER = "character"


@dataclass(frozen=True)
class _Token:
    kind: _Kind
    pos: int
    text: str
    error: str = ""  # why an ILLEGAL token is illegal


_QUOTES = '"/|'
_OPERATOR_CHARS = "=!~"
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
_NUMERIC_ESCAPES = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}  # base, digits after the letter


def _is_field_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in "_-")


def _is_value_char(ch: str) -> bool:
    return ch != "," and not ch.isspace() and ch.isprintable()


_DIGITS = {8: "01234567", 16: "0123456789abcdefABCDEF"}


def _digit(ch: str, base: int) -> bool:
    return ch != "" and ch in _DIGITS[base]


class _Scanner:
    """Tokens of one filter string. After an operator the scanner reads a *value* (any printable
    run), elsewhere a *field* (letters, digits, ``_``, ``-``): that is why ``a==b.c`` is one value
    but ``a.b`` two fields."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.want_value = False

    def peek(self) -> str:
        """The next raw character (no whitespace skipped), '' at the end."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def scan(self) -> _Token:
        text = self.text
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if start >= len(text):
            return _Token(_Kind.EOF, start, "")
        ch = text[start]
        if ch == "\0":
            self.pos += 1
            return _Token(_Kind.ILLEGAL, start, ch, "unexpected null")
        if ch in _QUOTES:
            error = self._skip_quoted(ch)
            kind = _Kind.ILLEGAL if error else _Kind.QUOTED
            return _Token(kind, start, text[start : self.pos], error)
        if ch in ",.":
            self.pos += 1
            self.want_value = False
            return _Token(_Kind.SEPARATOR, start, ch)
        if ch in _OPERATOR_CHARS:
            self._skip_while(lambda c: c in _OPERATOR_CHARS)
            self.want_value = True
            return _Token(_Kind.OPERATOR, start, text[start : self.pos])
        if self.want_value:
            self._skip_while(_is_value_char)
            self.want_value = False
            return _Token(_Kind.VALUE, start, text[start : self.pos])
        if _is_field_char(ch):
            self._skip_while(_is_field_char)
            return _Token(_Kind.FIELD, start, text[start : self.pos])
        self.pos += 1
        return _Token(_Kind.OTHER, start, ch)

    def _skip_while(self, pred: Callable[[str], bool]) -> None:
        while self.pos < len(self.text) and pred(self.text[self.pos]):
            self.pos += 1

    def _skip_quoted(self, quote: str) -> str:
        """Move past a quoted string; return why it is illegal, or ''. Like Go's scanner, an
        illegal escape does not stop the scan: the token still ends at its closing quote."""
        text = self.text
        error = ""
        self.pos += 1
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                self.pos = min(self.pos + 1, len(text))
                return error or "quoted literal not terminated"
            ch = text[self.pos]
            self.pos += 1
            if ch == quote:
                return error
            if ch != "\\":
                continue
            esc = self.peek()
            if esc in _SIMPLE_ESCAPES or esc == quote:
                self.pos += 1
            elif esc in _NUMERIC_ESCAPES or _digit(esc, 8):
                base, count = _NUMERIC_ESCAPES.get(esc, (8, 3))
                if esc in _NUMERIC_ESCAPES:
                    self.pos += 1
                while count and _digit(self.peek(), base):
                    self.pos += 1
                    count -= 1
                if count:
                    error = error or "illegal numeric escape sequence"
            else:
                error = error or "illegal escape sequence"


def _unquote(token: str) -> str:
    """The string a scanned (hence well-formed) quoted token stands for. Escapes yield bytes, as
    in Go: ``"\\xc3\\xa9"`` is ``é``; bytes that are not UTF-8 survive as surrogate escapes."""
    quote, body = token[0], token[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == quote:
            out += esc.encode()
            i += 2
        elif esc in _NUMERIC_ESCAPES:
            width = _NUMERIC_ESCAPES[esc][1]
            code = int(body[i + 2 : i + 2 + width], 16)
            i += 2 + width
            if esc == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError(f"invalid code point U+{code:X}")
            else:
                out += chr(code).encode("utf-8")
        else:
            code = int(body[i + 1 : i + 4], 8)
            if code > 255:
                raise ValueError(f"octal escape \\{body[i + 1 : i + 4]} is over 255")
            out.append(code)
            i += 4
    return out.decode("utf-8", "surrogateescape")


# --- the parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.scanner = _Scanner(text)

    def parse(self) -> _All:
        selectors = [self._selector()]
        while True:
            nxt = self.scanner.peek()
            if nxt == "":
                return _All(tuple(selectors))
            if nxt != ",":
                raise self._error(self.scanner.pos, f"unexpected input: {nxt}")
            self.scanner.scan()
            selectors.append(self._selector())

    def _selector(self) -> _Selector:
        fieldpath = self._fieldpath()
        if self.scanner.peek() in ("", ","):
            return _Selector(fieldpath, _Op.PRESENT)
        op = self._operator()
        token = self.scanner.scan()
        if token.kind in (_Kind.VALUE, _Kind.FIELD):
            value = token.text
        elif token.kind is _Kind.QUOTED:
            # Slashes and pipes quote regular expressions only, so that ``==/x/`` stays an error.
            value = self._unquote(token, alternatives=op is _Op.MATCHES)
        elif token.kind is _Kind.ILLEGAL:
            raise self._error(token.pos, token.error)
        else:
            raise self._error(token.pos, "expected value or quoted")
        if op is not _Op.MATCHES:
            return _Selector(fieldpath, op, value)
        return _Selector(fieldpath, op, value, self._compile(value, token.pos))

    def _compile(self, value: str, pos: int) -> Any:
        pattern = value.encode("utf-8", "surrogateescape")
        if len(pattern) > MAX_REGEX:
            raise self._error(pos, f"regular expression of {len(pattern)} bytes is over the "
                                   f"limit of {MAX_REGEX} bytes")
        re2, options = _re2()
        try:
            return re2.compile(pattern, options)
        except re2.error as err:
            # RE2 reports bytes (b'missing ): ('); say it as text.
            reason = err.args[0] if err.args else err
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise self._error(pos, f"invalid regular expression {value!r}: {reason}") from err

    def _fieldpath(self) -> tuple[str, ...]:
        fields = [self._field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()
            fields.append(self._field())
        return tuple(fields)

    def _field(self) -> str:
        token = self.scanner.scan()
        if token.kind is _Kind.FIELD:
            return token.text
        if token.kind is _Kind.QUOTED:
            return self._unquote(token, alternatives=False)
        if token.kind is _Kind.ILLEGAL:
            raise self._error(token.pos, token.error)
        raise self._error(token.pos, "expected field or quoted")

    def _operator(self) -> _Op:
        token = self.scanner.scan()
        if token.kind is _Kind.ILLEGAL:
            raise self._error(token.pos, token.error)
        if token.kind is not _Kind.OPERATOR:
            raise self._error(token.pos, 'expected an operator ("=="|"!="|"~=")')
        for op in (_Op.EQUAL, _Op.NOT_EQUAL, _Op.MATCHES):
            if token.text == op.value:
                return op
        raise self._error(token.pos, f'unsupported operator "{token.text}"')

    def _unquote(self, token: _Token, *, alternatives: bool) -> str:
        if not alternatives and token.text[0] != '"':
            raise self._error(token.pos, "invalid quote encountered")
        try:
            return _unquote(token.text)
        except ValueError as err:
            raise self._error(token.pos, f"unquoting failed: {err}") from err

    def _error(self, pos: int, msg: str) -> errdefs.InvalidArgument:
        """containerd's message shape: the input with the offending character fenced."""
        text = self.text
        where = f"{text[:pos]} >|{text[pos]}|< {text[pos + 1 :]}" if pos < len(text) else text
        return errdefs.InvalidArgument(f"filters: parse error: [{where}]: {msg}")
