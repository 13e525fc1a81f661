"""containerd's default seccomp profile (`berth.oci.seccomp`): its shape, checked rule by rule;
equal to what the real containerd 1.6.20 writes (`ctr containers create --seccomp`, with and
without `--privileged`); and in force in a container that `berth run` starts on a real berthd,
where a system call the profile forbids fails with EPERM although the container's capabilities
would allow it.

The expectations are derived from containerd's `contrib/seccomp/seccomp_default.go` (the 1.6.20
source that Debian's golang-github-containerd-containerd-dev ships; where that package is
installed, the allowed list is also read from it and compared name for name).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Ctr
from reference_containerd import ReferenceContainerd
from test_cli_run import BERTH, Env

from berth.oci import seccomp
from berth.oci import spec as oci

GO_SOURCE = Path("/usr/share/gocode/src/github.com/containerd/containerd/contrib/seccomp/"
                 "seccomp_default.go")
CLONE_NS_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
EPERM, ENOSYS = 1, 38
MODERN = (6, 1)  # a kernel version from after ptrace stopped being a way around seccomp


def allowed(profile: dict[str, Any], *, unconditional: bool = True) -> set[str]:
    """The names an allow rule lets through (only rules without argument checks when
    ``unconditional``)."""
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
            and (not unconditional or not rule.get("args")) for name in rule["names"]}


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


# -- the profile's shape -----------------------------------------------------------------------


def test_default_action_and_architectures_on_x86_64() -> None:
    profile = seccomp.default_profile(oci.DEFAULT_CAPABILITIES, "x86_64", MODERN)
    assert list(profile) == ["defaultAction", "architectures", "syscalls"]
    # EPERM by the runtime's default: containerd writes no defaultErrnoRet.
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert profile == seccomp.default_profile(oci.DEFAULT_CAPABILITIES, "amd64", MODERN)
    json.dumps(profile)  # ready for a spec


def test_the_rules_in_containerds_order_for_the_default_capabilities() -> None:
    profile = seccomp.default_profile(oci.DEFAULT_CAPABILITIES, "x86_64", MODERN)
    rules = profile["syscalls"]
    assert rules[0] == {"names": list(seccomp.ALLOWED), "action": "SCMP_ACT_ALLOW"}
    assert len(seccomp.ALLOWED) == len(set(seccomp.ALLOWED)) == 349
    # personality: Linux, 32-bit Linux, UNAME26 (with and without), and the query.
    assert rules[1:6] == [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]}
        for value in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)]
    assert rules[6] == {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"}  # kernel >= 4.8
    assert rules[7] == {"names": ["arch_prctl", "modify_ldt"], "action": "SCMP_ACT_ALLOW"}
    # Of the 14 default capabilities only CAP_SYS_CHROOT has system calls of its own.
    assert rules[8] == {"names": ["chroot"], "action": "SCMP_ACT_ALLOW"}
    # No CAP_SYS_ADMIN: clone without namespace flags only; clone3 answers ENOSYS.
    assert rules[9] == {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": CLONE_NS_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}]}
    assert rules[10] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}
    assert len(rules) == 11


def test_key_system_calls_allowed_and_denied() -> None:
    profile = seccomp.default_profile(oci.DEFAULT_CAPABILITIES, "x86_64", MODERN)
    everyday = {"read", "write", "openat", "close", "execve", "mmap", "futex", "socket",
                "bind", "connect", "epoll_wait", "io_uring_setup", "statx", "chroot", "rseq",
                "pidfd_open", "close_range", "setuid", "capset", "arch_prctl", "ptrace"}
    assert everyday <= allowed(profile)
    forbidden = {"mount", "umount", "umount2", "unshare", "setns", "pivot_root", "bpf",
                 "perf_event_open", "keyctl", "add_key", "request_key", "kexec_load",
                 "kexec_file_load", "reboot", "init_module", "finit_module", "delete_module",
                 "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "iopl",
                 "ioperm", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "syslog",
                 "vhangup", "kcmp", "process_vm_readv", "process_vm_writev", "fsopen",
                 "move_mount", "open_tree", "quotactl", "sethostname", "setdomainname",
                 "mbind", "set_mempolicy", "lookup_dcookie", "clone3"}
    assert not forbidden & allowed(profile, unconditional=False)
    assert "clone" not in allowed(profile)  # only with its flags checked


# containerd's lists, in its order.
@pytest.mark.parametrize(("cap", "unlocked"), [
    ("CAP_DAC_READ_SEARCH", ["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", ["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount",
                       "fsopen", "fspick", "lookup_dcookie", "mount", "mount_setattr",
                       "move_mount", "name_to_handle_at", "open_tree", "perf_event_open",
                       "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
                       "syslog", "umount", "umount2", "unshare"]),
    ("CAP_SYS_BOOT", ["reboot"]),
    ("CAP_SYS_CHROOT", ["chroot"]),
    ("CAP_SYS_MODULE", ["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", ["acct"]),
    ("CAP_SYS_PTRACE", ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                        "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", ["iopl", "ioperm"]),
    ("CAP_SYS_TIME", ["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", ["vhangup"]),
    ("CAP_SYS_NICE", ["get_mempolicy", "mbind", "set_mempolicy"]),
    ("CAP_SYSLOG", ["syslog"]),
    ("CAP_BPF", ["bpf"]),
    ("CAP_PERFMON", ["perf_event_open"]),
])
def test_each_capability_unlocks_its_system_calls(cap: str, unlocked: list[str]) -> None:
    without = seccomp.default_profile([], "x86_64", MODERN)
    with_cap = seccomp.default_profile([cap], "x86_64", MODERN)
    # (ptrace is allowed anyway on a kernel from 4.8 on)
    assert allowed(with_cap) - allowed(without) == set(unlocked) - {"ptrace"}
    assert {"names": unlocked, "action": "SCMP_ACT_ALLOW"} in with_cap["syscalls"]


def test_cap_sys_admin_lifts_the_clone_flag_mask_and_the_clone3_answer() -> None:
    admin = seccomp.default_profile([*oci.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], "x86_64",
                                    MODERN)
    assert {"mount", "unshare", "setns", "clone", "clone3", "umount2"} <= allowed(admin)
    assert all(not rule.get("args") for rule in rules_for(admin, "clone"))
    assert not [r for r in admin["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"]


def test_rules_follow_the_bounding_sets_order() -> None:
    profile = seccomp.default_profile(["CAP_SYS_TIME", "CAP_KILL", "CAP_SYS_BOOT"], "x86_64",
                                      MODERN)
    tail = [rule["names"] for rule in profile["syscalls"][8:10]]
    assert tail == [["settimeofday", "stime", "clock_settime", "clock_settime64"], ["reboot"]]


def test_ptrace_only_from_kernel_4_8() -> None:
    old = seccomp.default_profile([], "x86_64", (4, 4))
    assert "ptrace" not in allowed(old)
    assert "ptrace" in allowed(seccomp.default_profile([], "x86_64", (4, 8)))
    assert seccomp.parse_kernel_release("6.1.0-18-amd64") == (6, 1)
    assert seccomp.parse_kernel_release("3.12-1-amd64") == (3, 12)
    assert seccomp.parse_kernel_release("garbage") is None


@pytest.mark.parametrize(("arch", "arches", "extra", "clone_index"), [
    ("aarch64", ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"],
     ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
      "cacheflush", "set_tls"], 0),
    ("armv7l", None, ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                      "breakpoint", "cacheflush", "set_tls"], 0),
    ("i686", None, ["modify_ldt"], 0),
    ("ppc64le", None, ["sync_file_range2", "swapcontext"], 0),
    ("s390x", ["SCMP_ARCH_S390", "SCMP_ARCH_S390X"],
     ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"], 1),
    ("riscv64", ["SCMP_ARCH_RISCV64"], ["riscv_flush_icache"], 0),
    ("mips64", ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"], None, 0),
    ("sparc64", None, None, 0),
])
def test_other_architectures(arch: str, arches: list[str] | None, extra: list[str] | None,
                             clone_index: int) -> None:
    profile = seccomp.default_profile([], arch, MODERN)
    assert profile.get("architectures") == arches  # containerd lists none for some
    rules = profile["syscalls"]
    arch_rule = rules[7] if extra else None  # after the base, 5 personality and ptrace
    assert (arch_rule["names"] if arch_rule else None) == extra
    clone = rules_for(profile, "clone")
    assert clone[0]["args"][0]["index"] == clone_index  # s390: flags are the 2nd argument


def test_option_reads_the_specs_bounding_set_and_copies() -> None:
    spec = oci.default_spec("default", "c1")
    before = json.dumps(spec, sort_keys=True)
    out = seccomp.with_default_profile()(spec)
    assert json.dumps(spec, sort_keys=True) == before  # not mutated
    assert out["linux"]["seccomp"] == seccomp.default_profile(oci.DEFAULT_CAPABILITIES)
    admin = oci.with_capabilities([*oci.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])(spec)
    assert "mount" in allowed(seccomp.with_default_profile()(admin)["linux"]["seccomp"])


@pytest.mark.skipif(not GO_SOURCE.is_file(), reason="containerd's Go source is not installed")
def test_allowed_list_is_containerd_1_6_20s() -> None:
    source = GO_SOURCE.read_text()
    first_rule = source[source.index("syscalls := []specs.LinuxSyscall{"):]
    first_rule = first_rule[:first_rule.index("Action: specs.ActAllow")]
    names = re.findall(r'"([a-z0-9_]+)"', first_rule)
    assert tuple(names) == seccomp.ALLOWED


# -- against the real containerd ---------------------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("extra", [[], ["--privileged"]], ids=["default", "privileged"])
def test_equal_to_what_containerd_writes(reference_containerd: ReferenceContainerd,
                                         ctr: type[Ctr], tmp_path: Path,
                                         extra: list[str]) -> None:
    c = ctr(reference_containerd.address)
    cid = f"seccomp-{uuid.uuid4().hex[:8]}"
    # --rootfs: a container over a plain directory, no image needed.
    c("containers", "create", "--rootfs", "--seccomp", *extra, str(tmp_path), cid)
    try:
        spec = json.loads(c("containers", "info", cid).stdout)["Spec"]
    finally:
        c("containers", "rm", cid)
    bounding = spec["process"]["capabilities"]["bounding"]
    assert ("CAP_SYS_ADMIN" in bounding) == bool(extra)
    assert spec["linux"]["seccomp"] == seccomp.default_profile(bounding)


# -- in a real container -----------------------------------------------------------------------


def _run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return env("run", "--rm", *args, ok=False)


@pytest.mark.needs_root
def test_a_denied_system_call_is_refused_in_the_container(env: Env) -> None:
    assert BERTH.exists()
    # The default profile lets clone/unshare make no namespace at all without CAP_SYS_ADMIN.
    denied = _run(env, env.ref, "unshare", "-U", "true")
    assert denied.returncode != 0, "unshare(CLONE_NEWUSER) was allowed"
    assert "Operation not permitted" in denied.stderr, denied.stderr  # EPERM, the default
    # Creating a user namespace takes no capability: without the filter it works, so the
    # refusal above is the filter's, not the capability set's.
    free = _run(env, "--security-opt", "seccomp=unconfined", env.ref, "unshare", "-U", "true")
    assert free.returncode == 0, free.stderr
    # and what is allowed still works
    ok = _run(env, env.ref, "sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert ok.returncode == 0, ok.stderr
    assert "Seccomp:\t2" in ok.stdout  # a filter is installed
