"""CVE-2024-40635 class: an integer overflow in a user id makes the container root.

The attack: containerd before 1.6.38 parsed the number of a ``User`` (``-u``, an image's config
``User``) as an int and converted it to uint32, so ``4294967296`` became 0 and the container
ran as root. The fix bounds the ids of a user string to 0..2147483647, the limit runc's
``libcontainer/user`` keeps when it resolves a user (int32).

Berth (:mod:`berth.oci.users`) never wraps an id: every uid and gid, written in a user string or
read from the image's ``/etc/passwd`` and ``/etc/group``, must lie in 0..2147483647, or ``berth
run`` / ``berth exec`` fails with one InvalidArgument line naming the id and the range, before
any container or snapshot is made. (Before the fix, Berth already refused numbers past 2^32 - 1
but let 2^31..2^32 - 1 through to runc, which failed late, after the container was made, with
runc's own message; ids out of range in the image's files were skipped, so the user was "not
found".) A spec that another API client writes with such an id is passed to runc as it is (as
containerd does) and never runs as root: runc refuses an id past 2^32 - 1 (the spec's uint32)
and runs 2^31 .. 2^32 - 1 as written, never wrapped.

Run through the installed ``berth`` (and the real ``ctr`` for the API-client case) against a
real berthd with Berth's own shim, real runc and images built on busybox.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Ctr, berth_env
from images import ImageInfo, push_derived
from registry import Registry
from test_cli_run import Env, one_error_line
from test_cve_2022_24769_inheritable_caps import respec

from berth import errdefs
from berth.oci.users import resolve_user

pytestmark = pytest.mark.needs_root

MAX_ID = 2**31 - 1  # containerd's bound since the fix (math.MaxInt32), runc's int32

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
evil:x:4294967296:0:wraps to root:/:/bin/sh
high:x:2147483648:1000:past runc's limit:/:/bin/sh
wrapgid:x:1000:4294967296:gid wraps to root:/:/bin/sh
negative:x:-1:1000:uint32(-1):/:/bin/sh
alice:x:1000:1000:Alice:/tmp:/bin/sh
edge:x:2147483647:2147483647:the largest:/:/bin/sh
"""
GROUP = b"""\
root:x:0:
alice:x:1000:
bigstaff:x:4294967296:alice
"""
# Each out of range: past runc's int32, past uint32, negative.
BAD_USERS = ("2147483648", "4294967295", "4294967296", "4294967297", "18446744073709551616",
             "9" * 5000, "0:2147483648", "0:4294967296", "2147483648:0", "4294967296:0",
             "-1", "0:-1")
ID_PROBE = ("sh", "-c", "id -u; id -g")


@pytest.fixture(scope="module")
def images(registry: Registry, busybox_image: ImageInfo) -> dict[str, str]:
    """The accounts image, and images whose config User is out of range."""
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    refs = {"accounts": push_derived(registry, busybox_image, "overflow/accounts:latest",
                                     files=files)}
    for user in ("4294967296", "2147483648", "0:4294967296", "evil"):
        tag = user.replace(":", "-")
        refs[user] = push_derived(registry, busybox_image, f"overflow/user-{tag}:latest",
                                  files=files, config={"User": user})
    return refs


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]) -> Iterator[Env]:
    with berth_env(tmp_path_factory, "overflow",
                   [images["accounts"], *(r for k, r in images.items() if k != "accounts")]) as e:
        yield e


def assert_refused(env: Env, r: Any, *words: str) -> None:
    """One InvalidArgument line naming the range, and nothing made."""
    one_error_line(r, "out of range", f"0 to {MAX_ID}", *words)
    assert env("ps", "-aq").stdout == ""


def run_ids(env: Env, *args: str) -> tuple[int, int]:
    out = env("run", "--rm", *args, *ID_PROBE).stdout.split()
    return int(out[0]), int(out[1])


# -- without a daemon ----------------------------------------------------------------------------


def test_the_limit_is_containerds() -> None:
    for bad in BAD_USERS:
        with pytest.raises(errdefs.InvalidArgument):
            resolve_user(bad, None)
    assert resolve_user(f"{MAX_ID}:{MAX_ID}", None) == (MAX_ID, MAX_ID)


# -- berth run -u --------------------------------------------------------------------------------


@pytest.mark.parametrize("user", BAD_USERS, ids=lambda u: u if len(u) < 30 else "5000-digits")
def test_berth_run_refuses_an_id_out_of_range(env: Env, user: str) -> None:
    r = env("run", "--rm", "-u", user, env.ref, *ID_PROBE, ok=False)
    assert_refused(env, r)
    assert r.stdout == ""  # nothing ran, as root or anyone


def test_the_largest_id_still_runs(env: Env) -> None:
    assert run_ids(env, "-u", f"{MAX_ID}:{MAX_ID}", env.ref) == (MAX_ID, MAX_ID)
    assert run_ids(env, "-u", "edge", env.ref) == (MAX_ID, MAX_ID)


# -- ids in the image's /etc/passwd and /etc/group -----------------------------------------------


@pytest.mark.parametrize(("user", "word"), [
    ("evil", "/etc/passwd: uid 4294967296 of user 'evil'"),
    ("high", "/etc/passwd: uid 2147483648 of user 'high'"),
    ("wrapgid", "/etc/passwd: gid 4294967296 of user 'wrapgid'"),
    ("negative", "/etc/passwd: uid -1 of user 'negative'"),
    ("1000:bigstaff", "/etc/group: gid 4294967296 of group 'bigstaff'"),
    ("alice", "/etc/group: gid 4294967296 of group 'bigstaff'"),  # a group she is in
])
def test_berth_run_refuses_an_account_out_of_range(env: Env, user: str, word: str) -> None:
    r = env("run", "--rm", "-u", user, env.ref, *ID_PROBE, ok=False)
    assert_refused(env, r, word)
    assert r.stdout == ""


# -- an image's config User ----------------------------------------------------------------------


@pytest.mark.parametrize("user", ["4294967296", "2147483648", "0:4294967296", "evil"])
def test_an_images_user_out_of_range(env: Env, images: dict[str, str], user: str) -> None:
    r = env("run", "--rm", images[user], *ID_PROBE, ok=False)
    assert_refused(env, r)
    assert r.stdout == ""


# -- berth exec -u -------------------------------------------------------------------------------


def test_berth_exec_refuses_too(env: Env) -> None:
    name = f"ovf-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--name", name, env.ref, "sleep", "60")
        for user in ("4294967296", "0:4294967296", "evil"):
            r = env("exec", "-u", user, name, *ID_PROBE, ok=False)
            one_error_line(r, "out of range")
            assert r.stdout == ""
        assert env("exec", "-u", str(MAX_ID), name, "id", "-u").stdout == f"{MAX_ID}\n"
    finally:
        env("rm", "-f", name, ok=False)


# -- a spec another client wrote -----------------------------------------------------------------


@pytest.mark.parametrize("ids", [(4294967296, 0), (0, 4294967296), (2147483648, 0)])
def test_a_clients_spec_with_such_an_id_never_runs_as_root(env: Env, ids: tuple[int, int]
                                                           ) -> None:
    ctr = Ctr(env.daemon.address)
    cid = f"ovf-{uuid.uuid4().hex[:10]}"
    ctr("containers", "create", env.ref, cid, "--", *ID_PROBE)
    try:
        def set_ids(spec: dict[str, Any]) -> None:
            spec["process"]["user"] = {"uid": ids[0], "gid": ids[1]}

        respec(env.daemon.address, cid, set_ids)
        r = ctr("tasks", "start", cid, input="", check=False)
    finally:
        ctr("tasks", "rm", "-f", cid, check=False)
        ctr("containers", "rm", cid, check=False)
    if r.returncode != 0:  # runc refuses a uid or gid past uint32 (its spec's type)
        assert r.stdout == "", r.stdout
        return
    # runc runs 2^31 as it is: never wrapped, never root
    assert tuple(int(n) for n in r.stdout.split()) == ids, r.stdout
