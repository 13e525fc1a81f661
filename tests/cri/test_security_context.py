"""CRI security contexts seen from inside the container, against containerd 1.6.20's CRI plugin.

Each case runs one pod (and one or two long-running busybox containers) on berthd and on the
reference containerd, set up alike, then observes the result from inside through ExecSync
(``id``, ``/proc/self/status``, ``/proc/mounts``, writes that must succeed or be refused...) and
through the container's own CRI log (its init process prints its pid, ids, groups,
capabilities, no-new-privileges and seccomp mode before it ``exec``s ``sleep``). For every probe
the two daemons must give the same exit code, stdout and stderr (once what legitimately differs,
pids, is set aside), and that observation must be the expected one: what containerd gives.

Seen with containerd here: a read-only rootfs leaves ``/tmp`` read-only too (no tmpfs there; only
``/dev`` and ``/dev/shm`` stay writable, and the pod's ``/etc`` files are bound read-only); a
privileged container's ``/sys`` mount point is read-write but its filesystem stays read-only,
since the sandbox mounted the same network namespace's sysfs read-only first; ``/proc/kcore`` is
not in this kernel, so ``/proc/timer_list`` shows the masking; containerd prefixes "CAP_" to every
capability name it is given and lets runc ignore what it does not know; an image's own ``User``
gets uid 0's supplementary groups (runAsUser's default), not its own.

The items: run_as_user / run_as_group, run_as_username, supplemental_groups merged with the
image's ``/etc/group``, the image's own ``User``, readonly_rootfs, privileged, capabilities added
and dropped (and ALL dropped), masked and read-only paths, no_new_privs, seccomp (runtime/default,
docker/default, unconfined, empty, localhost/<profile>, and the ``seccomp`` field), the PID
namespace modes (POD, CONTAINER, NODE), pod sysctls, and the pod's hostname, ``/etc/hosts``,
``/etc/resolv.conf`` from its DNSConfig and its ``/dev/shm`` shared by two containers.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import require_root
from cri_fixtures import CRI, container_config, cri_daemons, pod_config
from images import ImageInfo, push_derived
from registry import Registry

from berth.api.cri.runtime.v1 import api_pb2 as pb

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:App:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = b"""\
root:x:0:
wheel:x:10:root
audio:x:29:app,nobody
video:x:44:app
app:x:1000:
nogroup:x:65534:
"""
DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
              "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
# What the kubelet sends by default (its DefaultProcMount).
KUBELET_MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                  "/sys/firmware"]
KUBELET_READONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                    "/proc/sysrq-trigger"]
DEFAULT_CAPS = 0xA80425FB  # containerd's (and Docker's) default capability set
CAP_CHOWN, CAP_NET_RAW, CAP_NET_ADMIN = 0, 13, 12
# The container's init process prints this to its CRI log, then sleeps (exec: same pid).
MAIN = ("echo pid=$$ uid=$(id -u) gid=$(id -g); grep -E '^(CapEff|NoNewPrivs|Seccomp|Groups):' "
        "/proc/self/status; exec sleep 1000")
PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def _host_status(key: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line + "\n"
    raise AssertionError(key)


def _caps(bits: int) -> str:
    return f"CapEff:\t{bits:016x}\n"


HOST_CMDLINE = Path("/proc/1/cmdline").read_bytes().decode("utf-8", "backslashreplace")
HOST_FILES = {p: Path(p).read_text() if Path(p).exists() else ""
              for p in ("/etc/hosts", "/etc/resolv.conf")}
HOST_FIRMWARE = "".join(f"{n}\n" for n in sorted(os.listdir("/sys/firmware"))
                        if not n.startswith("."))


# -- cases ---------------------------------------------------------------------------------------

# What a probe must give: (exit code, stdout[, what stderr must contain]), stdout a string or a
# regex (fullmatch); None: only the two daemons are compared.
Want = tuple[int, "str | re.Pattern[str]"] | tuple[int, "str | re.Pattern[str]", str] | None
Setup = Callable[[pb.PodSandboxConfig, dict[str, pb.ContainerConfig], Path], None]


@dataclass
class Probe:
    container: str
    script: str
    want: Want = None


@dataclass
class Case:
    setup: Setup
    probes: list[Probe]
    containers: tuple[str, ...] = ("app",)
    image: str = "busybox"  # or "accounts"
    log: tuple[str, ...] = ()  # lines the init process's log must hold (after normalising)


def _ctx(**settings: Any) -> Setup:
    """Set fields of every container's security context."""
    def change(pod: pb.PodSandboxConfig, cfgs: dict[str, pb.ContainerConfig], tmp: Path) -> None:
        for cfg in cfgs.values():
            ctx = cfg.linux.security_context
            for key, value in settings.items():
                if key in ("run_as_user", "run_as_group"):
                    getattr(ctx, key).value = value
                elif key in ("add", "drop"):
                    getattr(ctx.capabilities, f"{key}_capabilities").extend(value)
                elif key in ("masked_paths", "readonly_paths", "supplemental_groups"):
                    getattr(ctx, key).extend(value)
                elif key == "seccomp_profile_path":
                    ctx.seccomp_profile_path = value.replace("TMP", str(tmp))
                elif key == "seccomp":
                    kind, ref = value
                    ctx.seccomp.profile_type = kind
                    ctx.seccomp.localhost_ref = ref.replace("TMP", str(tmp))
                else:
                    setattr(ctx, key, value)
    return change


def _privileged(pod: pb.PodSandboxConfig, cfgs: dict[str, pb.ContainerConfig], tmp: Path) -> None:
    pod.linux.security_context.privileged = True
    for cfg in cfgs.values():
        cfg.linux.security_context.privileged = True


def _pid(pod_mode: int, container_mode: int) -> Setup:
    def change(pod: pb.PodSandboxConfig, cfgs: dict[str, pb.ContainerConfig], tmp: Path) -> None:
        pod.linux.security_context.namespace_options.pid = pod_mode
        for cfg in cfgs.values():
            cfg.linux.security_context.namespace_options.pid = container_mode
    return change


def _sysctls(pod: pb.PodSandboxConfig, cfgs: dict[str, pb.ContainerConfig], tmp: Path) -> None:
    pod.linux.sysctls.update({"net.ipv4.ip_unprivileged_port_start": "0",
                              "net.ipv4.ping_group_range": "0 2147483647",
                              "kernel.shm_rmid_forced": "1"})


def _pod_files(pod: pb.PodSandboxConfig, cfgs: dict[str, pb.ContainerConfig], tmp: Path) -> None:
    pod.hostname = "secctx-host"
    pod.dns_config.CopyFrom(pb.DNSConfig(servers=["10.0.0.10", "10.0.0.11"],
                                         searches=["svc.cluster.local", "cluster.local"],
                                         options=["ndots:5", "timeout:2"]))


def _status(key: str, value: str) -> Probe:
    return Probe("app", f"grep '^{key}:' /proc/self/status", (0, f"{key}:\t{value}\n"))


def _groups(*gids: int) -> Probe:
    """The kernel's list (sorted) of the process's groups, primary group included."""
    return Probe("app", "grep '^Groups:' /proc/self/status",
                 (0, "Groups:\t" + "".join(f"{g} " for g in sorted(gids)) + "\n"))


ROFS = "Read-only file system"
EPERM = "Operation not permitted"
# /proc/kcore is not in this kernel: /proc/timer_list (0400 root) stands for the masked files.
TIMER_LIST = "head -c 10 /proc/timer_list"
LO_UP = "ip addr add 192.0.2.1/32 dev lo"  # any rtnetlink change needs CAP_NET_ADMIN
CHOWN = "touch /tmp/f && chown 1 /tmp/f"
# The mount point's own flags, then the filesystem's (the pod's sysfs, mounted read-only by the
# sandbox in the same network namespace, keeps its superblock read-only for all).
SYSFS = "grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f4-"
CGROUP = "grep ' /sys/fs/cgroup/memory ' /proc/self/mountinfo | cut -d' ' -f5,6"

CASES: dict[str, Case] = {
    "default": Case(_ctx(), [
        Probe("app", "id", (0, "uid=0(root) gid=0(root) groups=0(root)\n")),
        _status("CapEff", f"{DEFAULT_CAPS:016x}"),
        _status("NoNewPrivs", "0"),
        _status("Seccomp", "0"),  # an empty profile path: unconfined
        Probe("app", TIMER_LIST, (0, "Timer List")),  # no masked paths unless asked
        Probe("app", "ls /sys/firmware", (0, HOST_FIRMWARE)),
        Probe("app", f"echo 1024 > {PORT_START}", (0, "")),  # /proc/sys not read-only
        Probe("app", LO_UP, (2, "", EPERM)),
        Probe("app", SYSFS, (0, "/ /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro\n")),
        Probe("app", CGROUP, (0, "/sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime\n")),
        Probe("app", "ls /dev"),
        Probe("app", "test -e /dev/kmsg", (1, "")),  # no host devices
        Probe("app", "touch /x && echo ok", (0, "ok\n")),
        Probe("app", "cat /proc/1/cmdline", (0, "/pause\0-P\0")),  # the pod's pid namespace
        Probe("app", f"test -d /proc/{os.getpid()}", (1, "")),
        Probe("app", "cat /etc/resolv.conf", (0, HOST_FILES["/etc/resolv.conf"])),
    ], log=("uid=0 gid=0", _caps(DEFAULT_CAPS).strip(), "NoNewPrivs:\t0", "Seccomp:\t0")),
    "run-as-user-group": Case(_ctx(run_as_user=1000, run_as_group=2000), [
        Probe("app", "id -u; id -g", (0, "1000\n2000\n")),
        _groups(2000),
        _status("CapEff", "0000000000000000"),
    ], log=("uid=1000 gid=2000",)),
    "run-as-user": Case(_ctx(run_as_user=4242), [
        Probe("app", "id -u; id -g", (0, "4242\n0\n")),  # unknown to the image: group 0
        _groups(0),
    ]),
    "run-as-username": Case(_ctx(run_as_username="nobody"), [
        Probe("app", "id", (0, "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n")),
        _groups(65534),
    ]),
    "supplemental-root": Case(_ctx(run_as_user=0, supplemental_groups=[1234, 10]), [
        Probe("app", "id -u; id -g", (0, "0\n0\n")),
        _groups(0, 10, 1234),  # root is in wheel (10) in the image's /etc/group
    ], image="accounts"),
    "supplemental-username": Case(_ctx(run_as_username="app", supplemental_groups=[29, 4321]), [
        Probe("app", "id", (0, "uid=1000(app) gid=1000(app) groups=29(audio),44(video),"
                               "1000(app),4321\n")),
        _groups(29, 44, 1000, 4321),
    ], image="accounts"),
    "supplemental-uid": Case(_ctx(run_as_user=1000, supplemental_groups=[5000]), [
        Probe("app", "id -u; id -g", (0, "1000\n1000\n")),
        _groups(29, 44, 1000, 5000),  # the uid looked up to its name, then its groups
    ], image="accounts"),
    # The image's config says User "app". containerd 1.6.20 runs it as app, but takes the
    # supplementary groups of run_as_user's default, uid 0 (root is in wheel): not app's.
    "image-user": Case(_ctx(), [
        Probe("app", "id -u; id -g", (0, "1000\n1000\n")),
        _groups(10, 1000),
    ], image="accounts"),
    "readonly-rootfs": Case(_ctx(readonly_rootfs=True), [
        Probe("app", "touch /x", (1, "", ROFS)),
        Probe("app", "touch /tmp/x", (1, "", ROFS)),  # no tmpfs on /tmp: part of the rootfs
        Probe("app", "touch /dev/shm/x && echo ok", (0, "ok\n")),
        Probe("app", "touch /dev/x && echo ok", (0, "ok\n")),  # runc's tmpfs
        Probe("app", "echo >> /etc/hosts", (1, "", ROFS)),  # the pod's files bound read-only
        Probe("app", "echo >> /etc/resolv.conf", (1, "", ROFS)),
        Probe("app", "echo >> /etc/hostname", (1, "", ROFS)),
        Probe("app", "grep ' / ' /proc/mounts | cut -d, -f1", (0, "overlay / overlay ro\n")),
    ]),
    "privileged": Case(_privileged, [
        Probe("app", "grep '^CapEff:' /proc/self/status", (0, _host_status("CapEff"))),
        _status("Seccomp", "0"),
        Probe("app", SYSFS, (0, "/ /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs ro\n")),
        Probe("app", CGROUP, (0, "/sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime\n")),
        Probe("app", "test -c /dev/kmsg && test -c /dev/loop-control", (0, "")),  # the host's
        Probe("app", TIMER_LIST, (0, "Timer List")),  # no masked paths
        Probe("app", f"echo 1024 > {PORT_START}", (0, "")),
        Probe("app", LO_UP, (0, "")),
    ]),
    "caps-add-drop": Case(_ctx(add=["NET_ADMIN"], drop=["CHOWN"]), [
        _status("CapEff", f"{DEFAULT_CAPS & ~(1 << CAP_CHOWN) | 1 << CAP_NET_ADMIN:016x}"),
        Probe("app", LO_UP, (0, "")),
        Probe("app", CHOWN, (1, "", EPERM)),
    ]),
    "caps-drop-all": Case(_ctx(drop=["ALL"]), [
        _status("CapEff", "0000000000000000"),
        Probe("app", CHOWN, (1, "", EPERM)),
    ]),
    "caps-drop-all-add-one": Case(_ctx(drop=["ALL"], add=["NET_RAW"]), [
        _status("CapEff", f"{1 << CAP_NET_RAW:016x}"),
    ]),
    # The CRI names capabilities without "CAP_": containerd prefixes whatever it gets, so
    # "CAP_NET_RAW" becomes CAP_CAP_NET_RAW, which runc ignores (as any unknown name).
    "caps-add-prefixed-name": Case(_ctx(drop=["ALL"], add=["CAP_NET_RAW"]), [
        _status("CapEff", "0000000000000000"),
    ]),
    "caps-add-unknown-name": Case(_ctx(add=["NO_SUCH_CAP"]), [
        _status("CapEff", f"{DEFAULT_CAPS:016x}"),
    ]),
    "paths": Case(_ctx(masked_paths=KUBELET_MASKED, readonly_paths=KUBELET_READONLY), [
        Probe("app", TIMER_LIST, (0, "")),  # /dev/null over it
        Probe("app", "ls -A /sys/firmware; cat /proc/keys", (0, "")),  # a tmpfs, /dev/null
        Probe("app", f"cat {PORT_START}", (0, "1024\n")),
        Probe("app", f"echo 1024 > {PORT_START}", (1, "", ROFS)),
        Probe("app", "cat /proc/sysrq-trigger; echo x > /proc/sysrq-trigger"),
    ]),
    "no-new-privs": Case(_ctx(no_new_privs=True), [_status("NoNewPrivs", "1")],
                         log=("NoNewPrivs:\t1",)),
    "seccomp-runtime-default": Case(_ctx(seccomp_profile_path="runtime/default"), [
        _status("Seccomp", "2"),
        Probe("app", "mkdir /tmp/d && echo ok", (0, "ok\n")),
    ], log=("Seccomp:\t2",)),
    "seccomp-docker-default": Case(_ctx(seccomp_profile_path="docker/default"),
                                   [_status("Seccomp", "2")]),
    "seccomp-unconfined": Case(_ctx(seccomp_profile_path="unconfined"),
                               [_status("Seccomp", "0")]),
    "seccomp-localhost": Case(_ctx(seccomp_profile_path="localhost/TMP/deny-mkdir.json"), [
        _status("Seccomp", "2"),
        Probe("app", "mkdir /tmp/d", (1, "", EPERM)),
        Probe("app", "touch /tmp/f && echo ok", (0, "ok\n")),
    ]),
    "seccomp-field-runtime-default": Case(
        _ctx(seccomp=(pb.SecurityProfile.RuntimeDefault, "")), [_status("Seccomp", "2")]),
    "seccomp-field-localhost": Case(
        _ctx(seccomp=(pb.SecurityProfile.Localhost, "TMP/deny-mkdir.json")), [
            _status("Seccomp", "2"),
            Probe("app", "mkdir /tmp/d", (1, "", EPERM)),
        ]),
    "pid-container": Case(_pid(pb.POD, pb.CONTAINER), [
        Probe("app", "cat /proc/1/cmdline", (0, "sleep\x001000\x00")),
    ], log=("pid=1 uid=0 gid=0",)),
    "pid-node": Case(_pid(pb.NODE, pb.NODE), [
        Probe("app", "cat /proc/1/cmdline", (0, HOST_CMDLINE)),
        Probe("app", f"test -d /proc/{os.getpid()}", (0, "")),  # this test's own process
    ]),
    "sysctls": Case(_sysctls, [
        Probe("app", f"cat {PORT_START} /proc/sys/net/ipv4/ping_group_range "
                     "/proc/sys/kernel/shm_rmid_forced", (0, "0\n0\t2147483647\n1\n")),
    ]),
    "pod-files-and-shm": Case(_pod_files, [
        Probe("app", "hostname; echo $HOSTNAME; cat /etc/hostname",
              (0, "secctx-host\nsecctx-host\nsecctx-host\n")),
        Probe("peer", "hostname", (0, "secctx-host\n")),
        Probe("app", "cat /etc/resolv.conf", (0, "search svc.cluster.local cluster.local\n"
                                                  "nameserver 10.0.0.10\nnameserver 10.0.0.11\n"
                                                  "options ndots:5 timeout:2\n")),
        Probe("app", "cat /etc/hosts", (0, HOST_FILES["/etc/hosts"])),
        Probe("app", "grep ' /dev/shm ' /proc/mounts | cut -d' ' -f1-4",
              (0, re.compile(r"shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k"
                             r"\S*\n"))),
        Probe("app", "echo from-app > /dev/shm/note && echo ok", (0, "ok\n")),
        Probe("peer", "cat /dev/shm/note", (0, "from-app\n")),
    ], containers=("app", "peer")),
}


# -- running them --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(registry: Registry, busybox_image: ImageInfo) -> dict[str, str]:
    return {"busybox": busybox_image.ref,
            "accounts": push_derived(registry, busybox_image, "secctx/accounts:latest",
                                     files={"/etc/passwd": PASSWD, "/etc/group": GROUP},
                                     config={"User": "app"})}


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the localhost seccomp profiles lie (TMP in the cases)."""
    base = tmp_path_factory.mktemp("secctx-profiles")
    (base / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    return base


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
            images: dict[str, str]) -> Iterator[dict[str, CRI]]:
    require_root()
    base = tmp_path_factory.mktemp("cri-secctx")
    with cri_daemons(base, pause_image, net=1) as clients:
        for c in clients.values():
            for ref in images.values():
                c.pull(ref)
        yield clients


Observation = tuple[int, str, str]


def _normal(text: str) -> str:
    return re.sub(r"\bpid=(?!1\b)\d+", "pid=N", text)


def _init_log(path: Path, within: float = 10) -> list[str]:
    """The messages the init process wrote (once it has printed everything)."""
    deadline = time.monotonic() + within
    while True:
        text = path.read_text() if path.exists() else ""
        if "Seccomp:\t" in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return [_normal(f"{line.split(' ', 3)[1]} {line.split(' ', 3)[3]}")
            for line in text.splitlines()]


def _observe(c: CRI, case: Case, images: dict[str, str], logs: Path, tmp: Path
             ) -> dict[str, Any]:
    pod = pod_config("secctx", logs)
    cfgs = {name: container_config(name, images[case.image], MAIN) for name in case.containers}
    case.setup(pod, cfgs, tmp)
    pod_id = c.run_pod(pod)
    try:
        try:
            cids = {name: c.run(pod_id, cfg, pod) for name, cfg in cfgs.items()}
        except grpc.RpcError as err:
            return {"create": f"{err.code().name}: {err.details()}"}
        seen: dict[str, Any] = {"log": _init_log(logs / "app.log")}
        for i, probe in enumerate(case.probes):
            r = c.exec_sync(cids[probe.container], "sh", "-c", probe.script)
            seen[f"{i}: [{probe.container}] {probe.script}"] = (
                r.exit_code, _normal(r.stdout.decode("utf-8", "backslashreplace")),
                r.stderr.decode("utf-8", "backslashreplace"))
        return seen
    finally:
        c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=60)


def _meets(obs: Observation, want: Want) -> bool:
    if want is None:
        return True
    code, stdout = want[0], want[1]
    if obs[0] != code or (len(want) > 2 and want[2] not in obs[2]):
        return False
    if isinstance(stdout, str):
        return obs[1] == stdout
    return stdout.fullmatch(obs[1]) is not None


@pytest.mark.parametrize("case", list(CASES))
def test_security_context_seen_inside(daemons: dict[str, CRI], images: dict[str, str],
                                      profiles: Path, tmp_path: Path, case: str) -> None:
    spec = CASES[case]
    seen = {}
    for name, c in daemons.items():
        (tmp_path / name).mkdir()
        seen[name] = _observe(c, spec, images, tmp_path / name, profiles)
    ours, theirs = seen["berthd"], seen["containerd"]
    problems = []
    for key in {**theirs, **ours}:
        if ours.get(key) != theirs.get(key):
            problems.append(f"{key}\n    berthd:     {ours.get(key)!r}\n"
                            f"    containerd: {theirs.get(key)!r}")
    for i, probe in enumerate(spec.probes):
        key = f"{i}: [{probe.container}] {probe.script}"
        for name in ("berthd", "containerd"):
            if key in seen[name] and not _meets(seen[name][key], probe.want):
                problems.append(f"{key}\n    {name} gives {seen[name][key]!r}, "
                                f"expected {probe.want!r}")
    for line in spec.log:
        for name in ("berthd", "containerd"):
            if "log" in seen[name] and not any(line in m for m in seen[name]["log"]):
                problems.append(f"{name}'s log lacks {line!r}: {seen[name]['log']!r}")
    assert not problems, "\n".join(problems)
