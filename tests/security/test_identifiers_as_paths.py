"""Identifiers are paths: exec ids, container ids, namespaces and lease ids become file and
directory names, so each must pass containerd's ``identifiers.Validate`` before it reaches the
filesystem, at berthd's API edge and again in Berth's shim (which the real containerd drives
too, and which must not trust its caller to have checked).

The attack: ``ctr tasks exec --exec-id ../../../../tmp/x`` made the shim write runc's pid file
to ``/tmp/x.pid`` and unlink it as root at delete. A trailing newline was accepted too
(``re``'s ``$`` matches before it): ``web\\n`` was a container id in Berth, not in containerd.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Ctr
from daemon import Berthd
from google.protobuf import any_pb2
from images import ImageInfo
from test_shim import Shim, api, busybox_rootfs, container_spec, default_spec, run, workdir

from berth import errdefs, identifiers

__all__ = ["busybox_rootfs", "default_spec", "workdir"]  # fixtures shared with test_shim

pytestmark = pytest.mark.needs_root

# containerd's rule, as its regular expression, matched over the whole string.
CONTAINERD_RULE = re.compile(r"[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*")
SAMPLES = ["web", "web\n", "\nweb", "a.b_c-d", "a..b", ".a", "a.", "-a", "a-", "a/b", "..",
           "../x", "a b", "é", "A9", "x" * 76, "x" * 77, "", "a\x00b", "a--b", "a._b"]


@pytest.mark.parametrize("value", SAMPLES, ids=repr)
def test_identifier_rule_is_containerds(value: str) -> None:
    expected = bool(CONTAINERD_RULE.fullmatch(value)) and len(value) <= 76
    assert identifiers.is_valid(value) is expected
    if not expected:
        with pytest.raises(errdefs.InvalidArgument):
            identifiers.validate(value, "exec id")


# -- through the real ctr ----------------------------------------------------------------------


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """A host file an exec id of ``../../../..<path without .pid>`` would name."""
    path = Path("/tmp") / f"berth-sentinel-{uuid.uuid4().hex[:12]}.pid"
    path.write_text("host file\n")
    yield path
    path.unlink(missing_ok=True)


def traversal_exec_id(target: Path) -> str:
    return "../" * 12 + str(target.with_suffix("")).lstrip("/")


def run_detached(c: Ctr, image: str, runtime: str | None = None) -> str:
    cid = f"ids-{uuid.uuid4().hex[:10]}"
    extra = ["--runtime", runtime] if runtime else []
    c("run", "-d", *extra, image, cid, "sleep", "1000")
    return cid


def remove(c: Ctr, cid: str) -> None:
    c("tasks", "kill", "-s", "KILL", cid, check=False)
    c("tasks", "rm", "-f", cid, check=False)
    c("containers", "rm", cid, check=False)


def exec_with_hostile_id(c: Ctr, cid: str, sentinel: Path) -> None:
    r = c("tasks", "exec", "--exec-id", traversal_exec_id(sentinel), cid, "true", check=False)
    assert r.returncode != 0, "an exec id with ../ was accepted"
    assert "exec id" in r.stderr and "invalid" in r.stderr, r.stderr
    assert sentinel.read_text() == "host file\n", "the host file was written through an exec id"


def test_exec_id_traversal_is_refused_by_berthd(module_berthd: Berthd, busybox_image: ImageInfo,
                                                 sentinel: Path) -> None:
    c = Ctr(module_berthd.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    cid = run_detached(c, busybox_image.ref)
    try:
        exec_with_hostile_id(c, cid, sentinel)
        # The task is unharmed and a valid exec id still works.
        assert c("tasks", "exec", "--exec-id", "ok-1", cid, "echo", "fine").stdout == "fine\n"
    finally:
        remove(c, cid)


def test_exec_id_traversal_is_refused_by_berths_shim(workdir: Path, busybox_rootfs: Path,
                                                    default_spec: dict[str, Any],
                                                    sentinel: Path) -> None:
    """The shim checks again: containerd validates exec ids before they reach a shim, but a
    shim must not rely on every caller doing so (any ttrpc client of its socket)."""
    spec = container_spec(default_spec, ["sleep", "1000"])
    process = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                          value=json.dumps({**spec["process"], "args": ["true"]}).encode())

    async def main() -> None:
        async with Shim("berth", workdir, busybox_rootfs, spec) as shim:
            await shim.task.Create(shim.create_request())
            await shim.task.Start(api.StartRequest(id=shim.id))
            for exec_id in (traversal_exec_id(sentinel), "e1\n", "../e1"):
                with pytest.raises(errdefs.InvalidArgument, match="exec id"):
                    await shim.task.Exec(api.ExecProcessRequest(
                        id=shim.id, exec_id=exec_id, spec=process))
            await shim.task.Kill(api.KillRequest(id=shim.id, signal=9))
            await shim.task.Wait(api.WaitRequest(id=shim.id))
            await shim.task.Delete(api.DeleteRequest(id=shim.id))

    run(main())
    assert sentinel.read_text() == "host file\n"


@pytest.mark.parametrize("cid", ["web\n", "../web", "web/x"], ids=repr)
def test_container_ids_with_newlines_or_slashes_are_refused(
        module_berthd: Berthd, busybox_image: ImageInfo, cid: str) -> None:
    """(Lease ids are not paths: containerd keeps them as opaque keys, and ``ctr`` makes ids
    such as ``912925777-_04A`` that its identifier rule would refuse; Berth does the same.)"""
    c = Ctr(module_berthd.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    r = c("containers", "create", busybox_image.ref, cid, check=False)
    assert r.returncode != 0, f"container id {cid!r} was accepted"
    assert "invalid" in r.stderr, r.stderr
    assert c("containers", "ls", "-q").stdout.split() == []


def test_namespace_with_newline_is_refused(module_berthd: Berthd) -> None:
    c = Ctr(module_berthd.address)
    r = c("containers", "ls", namespace="default\n", check=False)
    assert r.returncode != 0 and "invalid" in r.stderr, r.stderr
