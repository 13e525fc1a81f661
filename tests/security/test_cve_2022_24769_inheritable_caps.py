"""CVE-2022-24769 class: containers started with a non-empty inheritable capability set.

The attack: containerd before 1.6.2 (and Moby before 20.10.14) put the default capabilities in
the process's *inheritable* set too. Inheritable capabilities survive ``execve`` into a program
whose file carries inheritable file capabilities, so a non-root user in the container who runs
such a program gets capabilities up to the bounding set, which a plain non-root exec never
gives. containerd 1.6.2 leaves ``inheritable`` (and ``ambient``) empty: only bounding,
effective and permitted are set, and only ``WithAmbientCapabilities``, asked for explicitly,
fills the other two.

Berth's default spec and its capability options (:mod:`berth.oci.spec`: the default, the
capabilities option, ``--privileged``) never set ``inheritable`` or ``ambient``. Seen from inside
the container, ``/proc/self/status`` shows ``CapInh`` and ``CapAmb`` all zero, for ``berth
run`` (as root, as a user, ``--privileged``), ``berth exec``, and ``ctr run`` (``--privileged``,
``--cap-add``) and ``ctr tasks exec`` against berthd. The control at the end shows that the
probe does see an inheritable set when a spec asks for one: Berth passes a client's explicit
choice through, as containerd does.

Run through the installed ``berth`` and the real ``ctr`` against a real berthd with Berth's
own shim, real runc and the busybox image.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Ctr
from test_cli_run import Env

from berth.client import Client
from berth.containers import AnyValue
from berth.oci import spec as oci

PROBE = ("sh", "-c", "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status")
ZERO = "0000000000000000"


def caps(output: str) -> dict[str, str]:
    found = dict(re.findall(r"^(Cap\w+):\t([0-9a-f]+)$", output, re.M))
    assert {"CapInh", "CapAmb", "CapEff"} <= set(found), f"not a status:\n{output}"
    return found


def assert_nothing_inheritable(output: str) -> None:
    found = caps(output)
    assert found["CapInh"] == ZERO, f"inheritable capabilities: {found}"
    assert found["CapAmb"] == ZERO, f"ambient capabilities: {found}"


def own_cap_eff() -> str:
    with open("/proc/self/status") as f:
        return caps(f.read())["CapEff"]


@pytest.fixture
def cid(env: Env) -> Iterator[str]:
    """A fresh container id for ctr, its task and container removed after the test."""
    c = f"inh-{uuid.uuid4().hex[:10]}"
    yield c
    ctr = Ctr(env.daemon.address)
    ctr("tasks", "kill", "-s", "KILL", c, check=False)
    ctr("tasks", "rm", "-f", c, check=False)
    ctr("containers", "rm", c, check=False)


def respec(address: str, container_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a container's spec as any API client can (Containers.Update of ``spec``)."""
    client = Client(address)
    try:
        container = client.containers.get(container_id)
        assert container.spec is not None
        spec = json.loads(container.spec.value)
        edit(spec)
        container.spec = AnyValue(container.spec.type_url, json.dumps(spec).encode())
        client.containers.update(container, ["spec"])
    finally:
        client.close()


# -- the spec options, without a daemon ----------------------------------------------------------


def test_no_option_sets_inheritable_or_ambient() -> None:
    specs = {
        "default": oci.default_spec("default", "c"),
        "capabilities": oci.with_capabilities(["CAP_SYS_ADMIN"])(
            oci.default_spec("default", "c")),
        "privileged": oci.with_privileged(oci.current_capabilities(), [])(
            oci.default_spec("default", "c")),
    }
    for what, spec in specs.items():
        process_caps = spec["process"]["capabilities"]
        assert not process_caps.get("inheritable"), (what, process_caps)
        assert not process_caps.get("ambient"), (what, process_caps)


# -- through berth -------------------------------------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("options", [(), ("-u", "1000:1000"), ("--privileged",),
                                     ("--privileged", "-u", "1000")],
                         ids=["root", "user", "privileged", "privileged-user"])
def test_berth_run(env: Env, options: tuple[str, ...]) -> None:
    out = env("run", "--rm", *options, env.ref, *PROBE).stdout
    assert_nothing_inheritable(out)
    if options == ("--privileged",):  # the probe runs where the capabilities are
        assert caps(out)["CapEff"] == own_cap_eff()


@pytest.mark.needs_root
def test_berth_exec(env: Env) -> None:
    name = f"inh-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--privileged", "--name", name, env.ref, "sleep", "60")
        assert_nothing_inheritable(env("exec", name, *PROBE).stdout)
        assert_nothing_inheritable(env("exec", "-u", "1000", name, *PROBE).stdout)
    finally:
        env("rm", "-f", name, ok=False)


# -- through ctr ---------------------------------------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("options", [(), ("--privileged",), ("--cap-add", "CAP_SYS_ADMIN")],
                         ids=["default", "privileged", "cap-add"])
def test_ctr_run(env: Env, cid: str, options: tuple[str, ...]) -> None:
    ctr = Ctr(env.daemon.address)
    out = ctr("run", "--rm", *options, env.ref, cid, *PROBE, input="").stdout
    assert_nothing_inheritable(out)
    if options == ("--cap-add", "CAP_SYS_ADMIN"):
        assert int(caps(out)["CapEff"], 16) & 1 << 21  # the added one is there


@pytest.mark.needs_root
def test_ctr_tasks_exec(env: Env, cid: str) -> None:
    ctr = Ctr(env.daemon.address)
    ctr("run", "-d", env.ref, cid, "sleep", "60")
    out = ctr("tasks", "exec", "--exec-id", "probe", cid, *PROBE, input="").stdout
    assert_nothing_inheritable(out)


# -- the control ---------------------------------------------------------------------------------


@pytest.mark.needs_root
def test_the_probe_sees_inheritable_capabilities_a_spec_asks_for(env: Env, cid: str) -> None:
    """A client that asks for inheritable and ambient CAP_KILL (bit 5) gets them, and the
    probe shows it: the checks above would fail on a spec that had them."""
    ctr = Ctr(env.daemon.address)
    ctr("containers", "create", env.ref, cid, "--", *PROBE)

    def ask(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
        spec["process"]["capabilities"]["ambient"] = ["CAP_KILL"]

    respec(env.daemon.address, cid, ask)
    out = ctr("tasks", "start", cid, input="").stdout
    found = caps(out)
    assert (found["CapInh"], found["CapAmb"]) == (f"{1 << 5:016x}", f"{1 << 5:016x}"), found
    with pytest.raises(AssertionError, match="inheritable capabilities"):
        assert_nothing_inheritable(out)
