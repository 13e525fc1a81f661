"""What the real `ctr` lists, parsed: shared by the tests that check stores stay consistent."""

from __future__ import annotations

import re

from conftest import Ctr


def table_rows(out: str) -> list[list[str]]:
    """The rows of a `ctr ... ls` table, header dropped, split on whitespace."""
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


def image_names(c: Ctr) -> set[str]:
    return set(c("images", "ls", "-q").stdout.split())


def content_digests(c: Ctr) -> set[str]:
    return set(c("content", "ls", "-q").stdout.split())


def snapshot_kinds(c: Ctr) -> dict[str, str]:
    """`ctr snapshots ls` as key -> kind (the PARENT column may be empty)."""
    return {row[0]: row[-1] for row in table_rows(c("snapshots", "ls").stdout)}


def committed(c: Ctr) -> set[str]:
    return {key for key, kind in snapshot_kinds(c).items() if kind == "Committed"}


def active_ingests(c: Ctr) -> dict[str, int]:
    """`ctr content active` as ref -> bytes written so far (ctr prints 4 significant digits,
    "8.389MB", so the number is within 0.1% of the offset)."""
    scale = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}
    found = {}
    for row in table_rows(c("content", "active").stdout):
        match = re.fullmatch(r"([0-9.]+)([kMG]?B)", row[1])
        assert match, row
        found[row[0]] = round(float(match[1]) * scale[match[2]])
    return found
