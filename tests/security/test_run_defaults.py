"""`berth run` confines a container by default: containerd's default seccomp profile and
`noNewPrivileges`, seen from inside the container in `/proc/self/status` (`Seccomp: 2` is a
filter in force, `NoNewPrivs: 1` the flag). `--security-opt` and `--privileged` turn them off
with nerdctl's meanings.

For the record: `ctr run` sets noNewPrivileges (`--allow-new-privs` clears it) but applies the
seccomp profile only with `--seccomp`; nerdctl applies the profile (unless `--privileged` or
`--security-opt seccomp=unconfined`) but leaves noNewPrivileges off unless `--security-opt
no-new-privileges`. Berth takes the safe default of each.

The installed `berth` runs as a child process against a real berthd (Berth's own shim), real
runc and the busybox image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_cli_run import Env, one_error_line

from berth.oci import spec as oci

STATUS_LINES = "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status"


def status(env: Env, *options: str) -> dict[str, str]:
    """`Seccomp`, `NoNewPrivs` and `CapEff` of a container's process, run with ``options``."""
    out = env("run", "--rm", *options, env.ref, "sh", "-c", STATUS_LINES).stdout
    return dict(re.findall(r"^(\w+):\t(\S+)$", out, re.M))


def own_cap_eff() -> str:
    with open("/proc/self/status") as f:
        found: list[str] = re.findall(r"^CapEff:\t(\S+)$", f.read(), re.M)
    return found[0]


# -- the spec options, without a daemon ----------------------------------------------------------


def test_privileged_spec_option() -> None:
    base = oci.default_spec("default", "c1")
    base["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO"}
    device = {"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600,
              "uid": 0, "gid": 0}
    spec = oci.with_privileged(["CAP_SYS_ADMIN", "CAP_NET_ADMIN"], [device])(base)
    assert base["linux"]["seccomp"] and base["process"]["noNewPrivileges"]  # not mutated
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == [
        "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
    assert spec["process"]["noNewPrivileges"] is False
    linux = spec["linux"]
    assert not {"seccomp", "maskedPaths", "readonlyPaths"} & set(linux)
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert linux["devices"] == [device]
    sysfs = next(m for m in spec["mounts"] if m["type"] == "sysfs")
    assert "ro" not in sysfs["options"] and "rw" in sysfs["options"]


def test_current_capabilities_and_host_devices() -> None:
    # This machine's root lacks CAP_SYS_RESOURCE (bit 24).
    caps = oci.current_capabilities("Name:\tx\nCapEff:\t000001fffeffffff\n")
    assert len(caps) == 40 and "CAP_SYS_RESOURCE" not in caps
    assert caps[0] == "CAP_CHOWN" and caps[-1] == "CAP_CHECKPOINT_RESTORE"
    devices = {d["path"]: d for d in oci.host_devices()}
    assert devices["/dev/null"] | {"fileMode": 0} == {
        "path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0, "uid": 0,
        "gid": 0}
    assert "/dev/console" not in devices
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in devices)


# -- through berth run -------------------------------------------------------------------------


@pytest.mark.needs_root
def test_run_confines_by_default(env: Env) -> None:
    got = status(env)
    assert got["Seccomp"] == "2", got  # a seccomp filter is in force
    assert got["NoNewPrivs"] == "1", got
    # and the spec berthd keeps says so too
    env("run", "-d", "--name", "spec-check", env.ref, "true")
    client = env.client()
    try:
        container = client.containers.get("spec-check")
        assert container.spec is not None
        spec = json.loads(container.spec.value)
    finally:
        client.close()
        env("rm", "-f", "spec-check", ok=False)
    assert spec["process"]["noNewPrivileges"] is True
    seccomp = spec["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "mount" not in {n for rule in seccomp["syscalls"] for n in rule["names"]}


@pytest.mark.needs_root
def test_exec_runs_under_the_same_filter(env: Env) -> None:
    env("run", "-d", "--name", "exec-check", env.ref, "sleep", "60")
    try:
        out = env("exec", "exec-check", "sh", "-c", STATUS_LINES).stdout
        assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out, out
    finally:
        env("rm", "-f", "exec-check", ok=False)


@pytest.mark.needs_root
def test_security_opts_turn_each_off(env: Env) -> None:
    got = status(env, "--security-opt", "seccomp=unconfined")
    assert (got["Seccomp"], got["NoNewPrivs"]) == ("0", "1"), got
    got = status(env, "--security-opt", "no-new-privileges=false")
    assert (got["Seccomp"], got["NoNewPrivs"]) == ("2", "0"), got
    got = status(env, "--security-opt", "no-new-privileges")
    assert (got["Seccomp"], got["NoNewPrivs"]) == ("2", "1"), got


@pytest.mark.needs_root
def test_privileged_has_no_filter_and_all_of_berths_capabilities(env: Env) -> None:
    got = status(env, "--privileged")
    assert got == {"Seccomp": "0", "NoNewPrivs": "0", "CapEff": own_cap_eff()}, got
    # what the default profile forbids (and the capabilities did not allow) now works
    r = env("run", "--rm", "--privileged", env.ref, "sh", "-c",
            "mkdir /m && mount -t tmpfs t /m && grep ' /m ' /proc/mounts")
    assert "tmpfs" in r.stdout
    # an explicit no-new-privileges still holds
    assert status(env, "--privileged", "--security-opt", "no-new-privileges")[
        "NoNewPrivs"] == "1"


@pytest.mark.needs_root
def test_a_profile_file(env: Env, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    r = env("run", "--rm", "--security-opt", f"seccomp={profile}", env.ref, "mkdir", "/x",
            ok=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert env("run", "--rm", "--security-opt", f"seccomp={profile}", env.ref,
               "touch", "/x").returncode == 0


@pytest.mark.needs_root
def test_bad_security_opts_are_refused_before_anything_is_made(env: Env, tmp_path: Path) -> None:
    not_json = tmp_path / "p.json"
    not_json.write_text("{")
    no_action = tmp_path / "q.json"
    no_action.write_text('{"syscalls": []}')
    for opt, word in (("apparmor=unconfined", "not supported"), ("seccomp=", "needs a value"),
                      ("no-new-privileges=maybe", "true or false"),
                      (f"seccomp={not_json}", "not JSON"),
                      (f"seccomp={no_action}", "defaultAction"),
                      (f"seccomp={tmp_path / 'missing.json'}", "cannot read")):
        one_error_line(env("run", "--rm", "--security-opt", opt, env.ref, "true", ok=False),
                       word)
    assert env("ps", "-aq").stdout == ""
