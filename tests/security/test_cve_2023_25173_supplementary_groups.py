"""CVE-2023-25173 class: supplementary groups not set up for a container's user.

The attack: containerd before 1.6.18 could start a process whose supplementary groups did not
include its primary group (``additionalGids`` empty or without the gid), and did not always add
the groups ``/etc/group`` lists the user in. A process outside its own primary group's list can
shed that group (by exec of a set-group-id program, say) and then slip past permissions that
deny the group ("negative" group permissions such as ``0705``). containerd 1.6.18 resolves a
user's groups from the image's ``/etc/group`` (``WithAdditionalGIDs``) wherever the user comes
from, and always puts the primary gid among them (``ensureAdditionalGids``).

Berth (:mod:`berth.oci.spec`, :mod:`berth.oci.users`): ``berth run -u USER``, ``berth exec -u
USER`` and an image's own ``User`` give the process the primary gid plus every group that lists
the user by name; an explicit ``user:group`` gives exactly that group; root gets its groups too.
Seen from inside the container: the ``Groups:`` line of ``/proc/self/status`` and ``id``.

The image: busybox with an ``/etc/passwd`` and ``/etc/group`` where ``alice`` (1000:1000) is also
in ``staff`` (2000) and ``audio`` (2001), and root in ``wheel`` (10); variants whose config
``User`` is ``alice`` and ``1000``. Run through the installed ``berth`` (and ``ctr run``, whose
spec is made by containerd's own Go code, as a reference) against a real berthd with Berth's
own shim and real runc.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Ctr, berth_env
from images import ImageInfo, push_derived
from registry import Registry
from test_cli_run import Env
from test_cve_2022_24769_inheritable_caps import respec

pytestmark = pytest.mark.needs_root

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:Alice:/tmp:/bin/sh
bob:x:1001:1001:Bob:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = b"""\
root:x:0:
wheel:x:10:root
alice:x:1000:alice
bob:x:1001:
staff:x:2000:alice
audio:x:2001:bob,alice
nogroup:x:65534:
"""
ALICE = {1000, 2000, 2001}  # her primary group (named after her: not "supplementary") + two
ROOT = {0, 10}
PROBE = ("sh", "-c", "grep '^Groups:' /proc/self/status; id")


def groups(output: str) -> set[int]:
    """The process's supplementary groups from its ``Groups:`` line."""
    found = re.search(r"^Groups:\t?(.*)$", output, re.M)
    assert found, f"no Groups line:\n{output}"
    return {int(g) for g in found[1].split()}


def ids(output: str) -> tuple[int, int]:
    found = re.search(r"^uid=(\d+)\S* gid=(\d+)", output, re.M)
    assert found, f"no id output:\n{output}"
    return int(found[1]), int(found[2])


def assert_user(output: str, uid: int, gid: int, expected: set[int]) -> None:
    assert ids(output) == (uid, gid), output
    got = groups(output)
    assert gid in got, f"the primary gid {gid} is not among the groups {sorted(got)}"
    assert got == expected, output


@pytest.fixture(scope="module")
def accounts(registry: Registry, busybox_image: ImageInfo) -> dict[str, str]:
    """The accounts image, plain and with a config ``User``."""
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    return {
        "plain": push_derived(registry, busybox_image, "groups/plain:latest", files=files),
        "alice": push_derived(registry, busybox_image, "groups/alice:latest", files=files,
                              config={"User": "alice"}),
        "1000": push_derived(registry, busybox_image, "groups/uid:latest", files=files,
                             config={"User": "1000"}),
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, accounts: dict[str, str]) -> Iterator[Env]:
    with berth_env(tmp_path_factory, "groups",
                   [accounts["plain"], *(r for k, r in accounts.items() if k != "plain")]) as e:
        yield e


# -- berth run -u --------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "uid", "gid", "expected"), [
    ("alice", 1000, 1000, ALICE),
    ("1000", 1000, 1000, ALICE),  # a uid is looked up to its name, then its groups
    ("bob", 1001, 1001, {1001, 2001}),
    ("root", 0, 0, ROOT),
    ("alice:staff", 1000, 2000, {2000}),  # an explicit group is the only one
    ("1000:1000", 1000, 1000, {1000}),
    ("1000:3000", 1000, 3000, {3000}),  # a gid the image does not know
    ("4242", 4242, 0, {0}),  # a uid the image does not know: group 0, as containerd
], ids=lambda v: str(v) if isinstance(v, (str, int)) else None)
def test_berth_run_user(env: Env, user: str, uid: int, gid: int, expected: set[int]) -> None:
    assert_user(env("run", "--rm", "-u", user, env.ref, *PROBE).stdout, uid, gid, expected)


def test_berth_run_as_the_default_root(env: Env) -> None:
    assert_user(env("run", "--rm", env.ref, *PROBE).stdout, 0, 0, ROOT)


def test_id_names_the_groups(env: Env) -> None:
    out = env("run", "--rm", "-u", "alice", env.ref, "id").stdout
    assert out.strip() == "uid=1000(alice) gid=1000(alice) groups=1000(alice),2000(staff)," \
                          "2001(audio)", out


# -- the image's own User ------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["alice", "1000"])
def test_the_images_user(env: Env, accounts: dict[str, str], image: str) -> None:
    assert_user(env("run", "--rm", accounts[image], *PROBE).stdout, 1000, 1000, ALICE)
    # -u replaces it, groups and all
    assert_user(env("run", "--rm", "-u", "bob", accounts[image], *PROBE).stdout, 1001, 1001,
                {1001, 2001})


def test_ctr_run_gives_the_same_groups(env: Env, accounts: dict[str, str]) -> None:
    """The reference: containerd's own client code (ctr 1.6.20, which has the fix) makes the
    spec, and it runs through berthd: the same groups as berth gives."""
    ctr = Ctr(env.daemon.address)
    ctr("images", "pull", "--plain-http", accounts["alice"])
    cid = f"grp-{uuid.uuid4().hex[:10]}"
    try:
        out = ctr("run", "--rm", accounts["alice"], cid, *PROBE, input="").stdout
    finally:
        ctr("containers", "rm", cid, check=False)
    assert_user(out, 1000, 1000, ALICE)


# -- berth exec -u -------------------------------------------------------------------------------


def test_berth_exec_user(env: Env, accounts: dict[str, str]) -> None:
    name = f"grp-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--name", name, env.ref, "sleep", "60")
        assert_user(env("exec", "-u", "alice", name, *PROBE).stdout, 1000, 1000, ALICE)
        assert_user(env("exec", "-u", "1000:1000", name, *PROBE).stdout, 1000, 1000, {1000})
        assert_user(env("exec", name, *PROBE).stdout, 0, 0, ROOT)  # the container's own
    finally:
        env("rm", "-f", name, ok=False)


# -- the control ---------------------------------------------------------------------------------


def test_the_probe_sees_a_primary_gid_left_out(env: Env) -> None:
    """A spec whose ``additionalGids`` leave the primary gid out (what containerd before
    1.6.18 could send): the process really runs without it, and the check above says so."""
    ctr = Ctr(env.daemon.address)
    cid = f"grp-{uuid.uuid4().hex[:10]}"
    ctr("containers", "create", env.ref, cid, "--", *PROBE)
    try:
        def leave_out(spec: dict[str, Any]) -> None:
            spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000]}

        respec(env.daemon.address, cid, leave_out)
        out = ctr("tasks", "start", cid, input="").stdout
    finally:
        ctr("tasks", "rm", "-f", cid, check=False)
        ctr("containers", "rm", cid, check=False)
    assert groups(out) == {2000}, out
    with pytest.raises(AssertionError, match="primary gid 1000 is not among"):
        assert_user(out, 1000, 1000, ALICE)
