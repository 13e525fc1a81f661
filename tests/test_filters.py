"""The filter grammar, against the corpus and cases containerd's own filter tests use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from berth import errdefs, filters


@dataclass(frozen=True)
class Entry:
    name: str
    other: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def adaptor(self) -> filters.Adaptor:
        def adapt(fieldpath: Sequence[str]) -> tuple[str, bool]:
            if fieldpath[0] == "name":
                return self.name, self.name != ""
            if fieldpath[0] == "other":
                return self.other, self.other != ""
            if fieldpath[0] == "labels":
                return filters.adapt_labels(self.labels, fieldpath)
            return "", False

        return adapt


CORPUS = [
    Entry("foo", labels={"foo": "true"}),
    Entry("bar"),
    Entry("foo", labels={"foo": "present", "more complex label": "present"}),
    Entry("bar", labels={"bar": "true"}),
    Entry("fooer", labels={'more complex label with \\ and "': "present"}),
    Entry("fooer", labels={'more complex label with \\ and ".post': "present"}),
    Entry("baz", other="too complex, yo"),
    Entry("bazo", other="abc"),
    Entry("compound", labels={"foo": "omg_asdf.asdf-qwer"}),
]


def selected(flt: Sequence[str]) -> list[int]:
    parsed = filters.parse(flt)
    return [i for i, entry in enumerate(CORPUS) if parsed.match(entry.adaptor())]


ALL = list(range(len(CORPUS)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name", ALL),
        ("labels.foo", [0, 2, 8]),
        ("labels.foo,name", [0, 2, 8]),
        ("labels.foo==true", [0]),
        ("labels.foo==omg_asdf.asdf-qwer", [8]),
        ("name==bar", [1, 3]),
        ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
        ("name==bar,labels.bar", [3]),
        ('other=="too complex, yo"', [6]),
        ("other~=[abc]+,name!=foo", [6, 7]),
        ("other~=/[abc]+/,name!=foo", [6, 7]),
        ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
        ("other~=|[abc]{1,2}|,name!=foo", [6, 7]),
        ('other~=/[abc]{0,1}"\\//,name!=foo', []),  # valid, matches nothing
        ("name==bar,labels.bar==true", [3]),
        ("name==bar,labels.bar==wrong", []),
        ('name==foo,labels."more complex label"', [2]),
        ('labels."more complex label with \\\\ and \\""==present', [4]),
        ('labels."more complex label with \\\\ and \\"".post==present', [5]),
        ("  name == bar", [1, 3]),
        ("name==bar, labels.bar", [3]),
        ("name~=^ba", [1, 3, 6, 7]),
        ("name~=o$", [0, 2, 7]),
    ],
)
def test_selects(text: str, expected: list[int]) -> None:
    assert selected([text]) == expected


def test_empty_matches_everything() -> None:
    assert selected([]) == ALL
    assert selected([""]) == ALL
    assert selected(["", "name==nothing"]) == ALL


def test_list_is_or_of_filters() -> None:
    assert selected(["name==bar", "labels.foo==true"]) == [0, 1, 3]
    assert selected(["name==nothing", "other==abc"]) == [7]


def test_not_equal_matches_absent_field() -> None:
    # containerd's rule: an absent field reads as "", which differs from "true".
    assert selected(["labels.foo!=true"]) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_regexp_applies_to_absent_field_as_empty_string() -> None:
    assert selected(["other~=^$"]) == [0, 1, 2, 3, 4, 5, 8]


def test_equal_requires_presence() -> None:
    def adaptor(fieldpath: Sequence[str]) -> tuple[str, bool]:
        return "", False

    assert not filters.match(['name==""'], adaptor)
    assert filters.match(['name==""'], lambda fp: ("", True))


def test_dotted_label_key_unquoted_and_quoted() -> None:
    entry = Entry("x", labels={"containerd.io/gc.root": "2024", "a.b.c": "1"})
    assert filters.match(['labels."containerd.io/gc.root"'], entry.adaptor())
    assert filters.match(["labels.a.b.c==1"], entry.adaptor())
    assert filters.match(['labels."a.b".c==1'], entry.adaptor())
    assert not filters.match(["labels.a.b"], entry.adaptor())
    assert not filters.match(["labels"], entry.adaptor())


def test_adapt_labels() -> None:
    labels = {"a.b": "v", "a": "w"}
    assert filters.adapt_labels(labels, ["labels", "a", "b"]) == ("v", True)
    assert filters.adapt_labels(labels, ["labels", "a"]) == ("w", True)
    assert filters.adapt_labels(labels, ["labels", "z"]) == ("", False)
    assert filters.adapt_labels(labels, ["labels"]) == ("", False)
    with pytest.raises(ValueError):
        filters.adapt_labels(labels, ["a", "b"])


def test_quoted_escapes() -> None:
    seen: list[Sequence[str]] = []

    def adaptor(fieldpath: Sequence[str]) -> tuple[str, bool]:
        seen.append(fieldpath)
        return "tab\there é \x01", True

    assert filters.match(['x=="tab\\there \\xc3\\xa9 \\001"'], adaptor)
    assert filters.match(['x=="tab\\there \\u00e9 \\x01"'], adaptor)
    assert filters.match(['x=="tab\\there \\U000000e9 \\x01"'], adaptor)
    assert filters.match(['"we\\"ird".f-_1'], adaptor)
    assert seen[-1] == ('we"ird', "f-_1")


def test_value_runs_to_comma_or_space() -> None:
    entry = Entry("a=b.c!d")
    assert filters.match(["name==a=b.c!d"], entry.adaptor())
    assert filters.match(["name==牛"], Entry("牛").adaptor())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "labels.|foo|==omg_asdf.asdf-qwer",
            "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: "
            "invalid quote encountered",
        ),
        (
            'labels.?"more complex label with \\\\ and \\"".post==present',
            'filters: parse error: [labels. >|?|< "more complex label with \\\\ and \\"".post'
            "==present]: expected field or quoted",
        ),
        ("name==foo,", "filters: parse error: [name==foo,]: expected field or quoted"),
        ("labels.", "filters: parse error: [labels.]: expected field or quoted"),
        (
            "image~=,id?=?fbaq",
            "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
        ),
        ("name=foo", 'filters: parse error: [name >|=|< foo]: unsupported operator "="'),
        ("name===foo", 'filters: parse error: [name >|=|< ==foo]: unsupported operator "==="'),
        ("name==", "filters: parse error: [name==]: expected value or quoted"),
        ("name==/foo/", "filters: parse error: [name== >|/|< foo/]: invalid quote encountered"),
        (
            "name==foo bar",
            "filters: parse error: [name==foo >| |< bar]: unexpected input:  ",
        ),
        (
            "name foo",
            'filters: parse error: [name  >|f|< oo]: expected an operator ("=="|"!="|"~=")',
        ),
        (
            "labels.containerd.io/key==value",
            "filters: parse error: [labels.containerd.io >|/|< key==value]: "
            "quoted literal not terminated",
        ),
        (
            'labels."a\nb"==v',
            'filters: parse error: [labels. >|"|< a\nb"==v]: quoted literal not terminated',
        ),
        ('labels."\\g"', 'filters: parse error: [labels. >|"|< \\g"]: illegal escape sequence'),
        (
            'labels."\\xaz"',
            'filters: parse error: [labels. >|"|< \\xaz"]: illegal numeric escape sequence',
        ),
        ("foo\x00bar", "filters: parse error: [foo >|\x00|< bar]: unexpected null"),
        ("   ", "filters: parse error: [   ]: expected field or quoted"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument) as info:
        filters.parse([text])
    assert str(info.value) == message


def test_error_in_any_filter_of_the_list() -> None:
    with pytest.raises(errdefs.InvalidArgument):
        filters.parse(["", "name=="])


@pytest.mark.parametrize(
    "text",
    [
        'labels."\\777"',  # octal over 255
        'labels."\\UFFFFFFFF"',  # beyond Unicode
        "name~=[abc",  # regular expression does not compile
        "name~=/(/",
    ],
)
def test_invalid_argument(text: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="filters: parse error"):
        filters.parse([text])


def test_parse_once_match_many() -> None:
    parsed = filters.parse(["name==foo", "name==bar"])
    hits = [e.name for e in CORPUS if parsed.match(e.adaptor())]
    assert hits == ["foo", "bar", "foo", "bar"]
