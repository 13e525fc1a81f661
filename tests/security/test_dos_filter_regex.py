"""Denial of service through a filter's regular expression (``labels.x~=(a+)+$``).

Any client may list images, content or containers with a ``~=`` filter, and the expression is
matched against every object's field. With Python's backtracking ``re``, ``(a+)+$`` against a
label of forty ``a`` and a ``!`` takes hours, holding the GIL: one ``ctr images ls`` stalled
every gRPC thread of berthd. containerd matches with Go's RE2, linear in the input whatever the
expression; Berth now uses RE2 too (``google-re2``), so the same ``ctr`` call answers at once.
Expressions RE2 (and so containerd) cannot compile, such as backreferences, are an
``InvalidArgument``, as is one over ``filters.MAX_REGEX`` bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import images
import pytest
from conftest import Ctr, sha256_of
from daemon import Berthd
from registry import Registry

from berth import errdefs, filters

EVIL = "(a+)+$"
# Python's re needs about 2**n steps for this value (n = 40: hours); RE2 needs n.
VICTIM = "a" * 40 + "!"


def matches(flt: str, value: str) -> bool:
    return filters.parse([flt]).match(lambda path: (value, True))


# -- the filter module -------------------------------------------------------------------------


def test_catastrophic_backtracking_is_linear() -> None:
    """25 ``a`` take Python's re about two seconds; RE2 a few microseconds, even for 4 KiB."""
    for value in ("a" * 25 + "!", "a" * 4095 + "!"):
        started = time.monotonic()
        assert not matches(f"labels.x~={EVIL}", value)
        assert time.monotonic() - started < 0.2


def test_many_objects_many_selectors_stay_fast() -> None:
    flt = filters.parse([f"labels.x~={EVIL},labels.x~=(x|x)*y", "labels.x~=(a|aa)*!$"])
    value = "a" * 4000 + "!"
    started = time.monotonic()
    hits = sum(flt.match(lambda path: (value, True)) for _ in range(1000))
    assert hits == 1000  # the last alternative matches
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("expression", [
    r"(a)\1",         # backreference: RE2 has none
    "(?=a)",          # lookahead
    "(?<!a)b",        # lookbehind
    "a{1001}",        # repeat count over RE2's 1000
    "(",              # plain syntax error
])
def test_what_re2_cannot_compile_is_invalid_argument(expression: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="invalid regular expression"):
        filters.parse([f"labels.x~={expression}"])


def test_pattern_length_is_capped() -> None:
    longest = "a" * filters.MAX_REGEX
    assert matches(f"labels.x~={longest}", longest)
    with pytest.raises(errdefs.InvalidArgument,
                       match=rf"regular expression of {filters.MAX_REGEX + 1} bytes is over the "
                             rf"limit of {filters.MAX_REGEX} bytes"):
        filters.parse([f"labels.x~={longest}a"])
    # bytes, not characters: 2049 two-byte characters are 4098 bytes
    with pytest.raises(errdefs.InvalidArgument, match="4098 bytes is over the limit"):
        filters.parse(["labels.x~=" + "é" * 2049])


@pytest.mark.parametrize(("expression", "value", "expected"), [
    ("^abc$", "abc", True),
    ("b", "abc", True),                       # unanchored
    ("^b", "abc", False),
    ("(?i)ABC", "abc", True),
    (r"^v\d+\.\d+$", "v1.20", True),
    (r"\d", "\u0663", False),                 # \d is ASCII, as in Go
    ("^.$", "é", True),                       # . is a character, not a byte
    ("^a$", "a\n", False),                    # $ is the end of text, as in Go (re: before \n)
    ("a|b", "b", True),
    (r"\pL+", "été", True),
    ("[[:alpha:]]+", "abc", True),
])
def test_go_regexp_semantics(expression: str, value: str, expected: bool) -> None:
    assert matches(f"labels.x~={expression}", value) is expected


def test_bytes_that_are_not_utf8_are_matched_as_bytes() -> None:
    """A quoted expression may hold escapes for bytes that are not UTF-8 (``\\xff``): RE2, like
    Go, refuses such an expression; a value holding such bytes is matched byte-wise."""
    with pytest.raises(errdefs.InvalidArgument, match="invalid UTF-8"):
        filters.parse([r"labels.x~=/\xff/"])
    assert matches("labels.x~=^a.b$", "a\udcffb") is False  # one invalid byte is not a char
    assert matches("labels.x~=^a", "a\udcffb") is True


# -- through the real ctr against a real berthd -----------------------------------------------


@pytest.fixture(scope="module")
def labelled(module_berthd: Berthd, registry: Registry) -> Iterator[tuple[Ctr, str, str]]:
    """An image pulled into berthd, and its layer blob, both labelled ``x=<VICTIM>``."""
    layer = images.make_tar({"/f": b"regex\n"})
    ref = images.push_layers(registry, f"dos/regex:{uuid.uuid4().hex[:8]}", [layer])
    c = Ctr(module_berthd.address, timeout=20)
    c("images", "pull", "--plain-http", ref)
    blob = sha256_of(images.compress(layer, "gzip"))
    c("images", "label", ref, f"x={VICTIM}")
    c("content", "label", blob, f"x={VICTIM}")
    yield c, ref, blob


def answered(c: Ctr, *args: str) -> tuple[str, float]:
    started = time.monotonic()
    out = c(*args).stdout
    return out, time.monotonic() - started


@pytest.mark.needs_root
def test_ctr_images_ls_with_an_evil_regex_answers_at_once(
        labelled: tuple[Ctr, str, str]) -> None:
    c, ref, _ = labelled
    out, took = answered(c, "images", "ls", "-q", f"labels.x~={EVIL}")
    assert out.split() == []
    assert took < 5, f"ctr images ls took {took:.1f} s"
    # the same filter that can match still does
    out, _ = answered(c, "images", "ls", "-q", "labels.x~=^(a+)+!$")
    assert out.split() == [ref]
    # and berthd still serves everyone else
    assert ref in c("images", "ls", "-q").stdout.split()


@pytest.mark.needs_root
def test_ctr_content_ls_with_an_evil_regex_answers_at_once(
        labelled: tuple[Ctr, str, str]) -> None:
    c, _, blob = labelled
    out, took = answered(c, "content", "ls", "-q", f"labels.x~={EVIL}")
    assert out.split() == []
    assert took < 5, f"ctr content ls took {took:.1f} s"
    out, _ = answered(c, "content", "ls", "-q", "labels.x~=a!$")
    assert out.split() == [blob]


@pytest.mark.needs_root
def test_ctr_gets_invalid_argument_for_what_re2_cannot_compile(
        labelled: tuple[Ctr, str, str]) -> None:
    c, _, _ = labelled
    result = c("images", "ls", "-q", r"labels.x~=(a)\1", check=False)
    assert result.returncode != 0
    assert "invalid regular expression" in result.stderr
    assert "invalid argument" in result.stderr
