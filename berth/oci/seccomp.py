"""containerd's default seccomp profile, as an OCI ``linux.seccomp`` object.

:func:`default_profile` gives what containerd 1.6.20's ``contrib/seccomp.DefaultProfile(spec)``
gives for a spec whose process has the given bounding capabilities (measured against the real
containerd by ``tests/security/test_seccomp_default.py``). It is the profile ``berth run`` applies
unless told otherwise, and the one CRI's ``runtime/default`` and ``docker/default`` name.

What it allows, rule by rule, in containerd's order:

1. the ordinary system calls (:data:`ALLOWED`), with no argument checks;
2. ``personality`` only for the personas a program may legitimately ask for
   (:data:`PERSONALITIES`: Linux, 32-bit Linux, the 2.6-era uname, both of those, and the query
   ``0xffffffff``);
3. ``ptrace``, when the host's kernel is 4.8 or later (before 4.8, a tracee could use ptrace to
   bypass seccomp itself);
4. the system calls only some architectures have (:data:`ARCH_SYSCALLS`);
5. for each capability in the bounding set, in that set's order, the system calls the
   capability is for (:data:`CAPABILITY_SYSCALLS`; ``CAP_SYS_ADMIN`` unlocks mount, unshare,
   setns, namespace-creating clone ...);
6. without ``CAP_SYS_ADMIN``: ``clone`` only when its flags ask for no new namespace (a masked
   comparison on the flags argument, the second one on s390, where clone's first two arguments
   are swapped), and ``clone3`` answered with ENOSYS instead of EPERM: its flags sit in memory
   that seccomp cannot inspect, so it cannot be filtered like ``clone``, and ENOSYS makes libc
   fall back to ``clone``.

Everything else fails with EPERM: the default action is ``SCMP_ACT_ERRNO`` without a
``defaultErrnoRet``, exactly as containerd writes it; the OCI runtime then uses EPERM (runc:
"errnoRet defaults to EPERM").

The architectures listed are the host's native one and the ones its kernel also runs
(x86_64 also runs i386 and x32 code): a filter must name every ABI a process could switch to, or
calls made through another ABI would meet the runtime's default. containerd decides them by
the architecture it was built for; Berth by the host's (``uname -m``), which is the same thing for
a native build. Where containerd lists none (arm, 386, ppc64le, ...), neither does this.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Collection, Mapping
from typing import Any

from berth import errdefs
from berth.oci.spec import Spec, SpecOpt

# The OCI names of actions, comparison operators and architectures (runtime-spec config-linux).
ACT_ALLOW = "SCMP_ACT_ALLOW"
ACT_ERRNO = "SCMP_ACT_ERRNO"
OP_EQUAL_TO = "SCMP_CMP_EQ"
OP_MASKED_EQUAL = "SCMP_CMP_MASKED_EQ"

ENOSYS = 38  # the same number on every Linux architecture containerd builds for

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET: the clone flags that create a namespace.
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                         | 0x20000000 | 0x40000000)

# The system calls every container may make, in containerd's order (kept, so that the profile
# is equal to containerd's to the byte, not only in effect).
_ALLOWED_TEXT = """
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup
    dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
    epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
    faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown
    fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
    fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
    futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
    getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
    gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
    inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
    ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc
    kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
    lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat
    lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
    mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget
    msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect open openat
    openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
    poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
    recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat
    renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
    rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
    sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
    semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg
    sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
    setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
    setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
    set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
    signalfd signalfd4 sigprocmask sigreturn socket socketcall socketpair splice stat stat64
    statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
    utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""
ALLOWED: tuple[str, ...] = tuple(_ALLOWED_TEXT.split())

# personality(2) personas: PER_LINUX, PER_LINUX32, UNAME26, UNAME26 | PER_LINUX32, and
# 0xffffffff, which only asks for the current persona.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# The kernel from which ptrace can no longer be used to get around a seccomp filter.
PTRACE_SAFE_KERNEL = (4, 8)

# Keys are Go's architecture names (containerd decides by runtime.GOARCH); see _ARCH_ALIASES
# for the uname -m spellings. "mips64n32", "mipsel64" and "mipsel64n32" are containerd's own
# spellings, kept although Go has no such GOARCH (so containerd never matches them either).
ARCHITECTURES: Mapping[str, tuple[str, ...]] = {
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
    "mips64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mips64n32": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"),
    "mipsel64": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "mipsel64n32": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32"),
    "s390x": ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
    "riscv64": ("SCMP_ARCH_RISCV64",),  # libseccomp has no 32-bit RISC-V
}

# System calls that exist on some architectures only.
ARCH_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "arm": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
            "cacheflush", "set_tls"),
    "amd64": ("arch_prctl", "modify_ldt"),
    "386": ("modify_ldt",),
    "s390": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}
ARCH_SYSCALLS = {**ARCH_SYSCALLS, "arm64": ARCH_SYSCALLS["arm"], "s390x": ARCH_SYSCALLS["s390"]}

# On s390 clone(2) takes the stack first and the flags second.
_CLONE_FLAGS_ARGUMENT = {"s390": 1, "s390x": 1}

# What each capability lets a process do that the profile otherwise forbids.
CAPABILITY_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
        "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
        "sethostname", "setns", "syslog", "umount", "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# uname -m (and a few other spellings) -> Go's architecture name.
_ARCH_ALIASES = {
    "x86_64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "armv8l": "arm", "armv7l": "arm", "armv6l": "arm", "armv5tel": "arm",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "x86": "386",
    "mips64el": "mips64le", "mipsel": "mipsle",
}


def go_arch(machine: str) -> str:
    """Go's name for the architecture ``machine`` (a ``uname -m`` value, or already a Go
    name): ``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``, ``armv7l`` -> ``arm``."""
    name = machine.strip().lower()
    if not name:
        raise errdefs.InvalidArgument("an architecture name must not be empty")
    return _ARCH_ALIASES.get(name, name)


def host_kernel() -> tuple[int, int] | None:
    """The running kernel's (version, major revision): the leading numbers of its release
    (``6.1.0-18-amd64`` -> (6, 1)), or None when it does not start with two (containerd then
    leaves ptrace out too)."""
    return parse_kernel_release(os.uname().release)


def parse_kernel_release(release: str) -> tuple[int, int] | None:
    """(version, major revision) from a kernel release string, or None."""
    digits = "0123456789"  # str.isdigit() would also take other scripts' digits
    version, dot, rest = release.partition(".")
    major = rest[:len(rest) - len(rest.lstrip(digits))]
    if not (version and version.strip(digits) == "" and dot and major):
        return None
    return int(version), int(major)


def _allow(*names: str) -> dict[str, Any]:
    return {"names": list(names), "action": ACT_ALLOW}


def default_profile(capabilities: Collection[str], arch: str | None = None,
                    kernel: tuple[int, int] | None = None) -> dict[str, Any]:
    """containerd's default ``linux.seccomp`` for a process whose bounding set is
    ``capabilities`` (names like ``CAP_SYS_ADMIN``; the order decides the order of the rules),
    on architecture ``arch`` (Go or ``uname -m`` name; default: this host's) and kernel
    ``kernel`` (default: the running one). A new dict, ready for JSON."""
    goarch = go_arch(arch if arch is not None else platform.machine())
    if kernel is None:
        kernel = host_kernel()
    rules: list[dict[str, Any]] = [_allow(*ALLOWED)]
    rules += [{**_allow("personality"),
               "args": [{"index": 0, "value": persona, "op": OP_EQUAL_TO}]}
              for persona in PERSONALITIES]
    if kernel is not None and kernel >= PTRACE_SAFE_KERNEL:
        rules.append(_allow("ptrace"))
    if goarch in ARCH_SYSCALLS:
        rules.append(_allow(*ARCH_SYSCALLS[goarch]))
    # Each capability once per time it is listed (containerd does not merge repeats either).
    rules += [_allow(*CAPABILITY_SYSCALLS[cap]) for cap in capabilities
              if cap in CAPABILITY_SYSCALLS]
    if "CAP_SYS_ADMIN" not in capabilities:
        rules.append({**_allow("clone"), "args": [{
            "index": _CLONE_FLAGS_ARGUMENT.get(goarch, 0), "value": CLONE_NAMESPACE_FLAGS,
            "op": OP_MASKED_EQUAL}]})
        rules.append({"names": ["clone3"], "action": ACT_ERRNO, "errnoRet": ENOSYS})
    profile: dict[str, Any] = {"defaultAction": ACT_ERRNO}
    if ARCHITECTURES.get(goarch):
        profile["architectures"] = list(ARCHITECTURES[goarch])
    profile["syscalls"] = rules
    return profile


def bounding_capabilities(spec: Spec) -> list[str]:
    """The spec's ``process.capabilities.bounding`` (empty when it has none)."""
    process = spec.get("process") or {}
    caps = (process.get("capabilities") or {}) if isinstance(process, dict) else {}
    bounding = caps.get("bounding") if isinstance(caps, dict) else None
    if bounding is None:
        return []
    if not isinstance(bounding, list) or not all(isinstance(c, str) for c in bounding):
        raise errdefs.InvalidArgument("the spec's process.capabilities.bounding must be a list "
                                      "of capability names")
    return list(bounding)


def with_default_profile(arch: str | None = None) -> SpecOpt:
    """Set ``linux.seccomp`` to :func:`default_profile` for the spec's own bounding set, read
    when the option is applied: apply it after every option that changes capabilities (as
    containerd's ``WithDefaultProfile``)."""

    def opt(spec: Spec) -> Spec:
        profile = default_profile(bounding_capabilities(spec), arch)
        linux = spec.get("linux") or {}
        if not isinstance(linux, dict):
            raise errdefs.InvalidArgument("the spec's linux section is not an object")
        return {**spec, "linux": {**linux, "seccomp": profile}}

    return opt
