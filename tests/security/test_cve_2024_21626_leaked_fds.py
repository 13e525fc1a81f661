"""CVE-2024-21626 class (runc's "Leaky Vessels"): no host file descriptor reaches a container,
and a working directory through ``/proc/self/fd/N`` cannot put a container's process in a
host directory.

The attack: runc before 1.1.12 leaked a descriptor of the host's ``/sys/fs/cgroup`` (fd 7 or
8) into ``runc init``; a container whose working directory was ``/proc/self/fd/7`` (a ``-w``
flag, or an image's ``WORKDIR``) started with its cwd on the host, and ``../../..`` reached the
host's root. ``runc exec`` had the same hole. The same class covers any descriptor the runtime
stack (here: berthd, Berth's shim, runc) lets through to the container's process.

What holds the line, layer by layer:

* Berth's shim starts runc with exactly its stdio (``berth.spawn.py``: every fd of ours
  is close-on-exec, the child gets 0-2 only). A wrapper around runc (``ctr run
  --runc-binary``) records what each runc command inherits.
* Debian's runc (1.1.5+ds1-1+deb12u1) carries the upstream fix: its internal fds are
  close-on-exec and it refuses a cwd outside the container's root.
* ``berth run -w``, ``berth exec -w`` and an image's ``WorkingDir`` refuse, before anything
  is made, a path that walks into a process's own ``/proc`` directory (``/proc/self/fd/7``,
  ``/proc/1/cwd``, ``/dev/fd/7``...): such a cwd is never a real working directory
  (berth.oci.spec.check_cwd). A symbolic link in an image is not followed by that check;
  runc's is the one that catches it, and a test here shows it does.

Each test runs through the real ``ctr`` or the installed ``berth`` against a real berthd with
Berth's shim, real runc and the busybox image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo, push_derived
from registry import Registry
from test_cli_run import Env, one_error_line

pytestmark = pytest.mark.needs_root

RUNC = "/usr/sbin/runc"
RUNC_COMMANDS = {"create", "start", "exec", "kill", "delete", "state", "update", "pause",
                 "resume", "ps", "events"}
LIST_FDS = ("ls", "-l", "/proc/self/fd")
# The names at the root of the busybox image (plus what runc mounts or makes there): a
# listing with anything else in it is the host's.
IMAGE_ROOT = {"bin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "usr", "var"}
ESCAPES = ("/proc/self/fd/7", "/proc/self/fd/8", "/proc/thread-self/fd/7", "/proc/1/cwd",
           "/dev/fd/7", "/proc/self/fd/7/../../..", "/proc/./self//fd/7")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, busybox_image: ImageInfo
           ) -> Iterator[Berthd]:
    """A berthd on Berth's own shim, with busybox pulled."""
    with Berthd(tmp_path_factory.mktemp("leaky") / "berthd") as d:
        Ctr(d.address)("images", "pull", "--plain-http", busybox_image.ref)
        yield d


@pytest.fixture(scope="module")
def env(daemon: Berthd, busybox_image: ImageInfo, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    """`berth` bound to the daemon; every container it knows removed at the end."""
    e = Env(daemon, busybox_image.ref, tmp_path_factory.mktemp("leaky-logs"), "berth")
    try:
        yield e
    finally:
        e.remove_all()


@pytest.fixture
def cid(daemon: Berthd) -> Iterator[str]:
    """A fresh container id, whose task and container are removed after the test."""
    c = f"leaky-{uuid.uuid4().hex[:10]}"
    yield c
    ctr = Ctr(daemon.address)
    ctr("tasks", "kill", "-s", "KILL", c, check=False)
    ctr("tasks", "rm", "-f", c, check=False)
    ctr("containers", "rm", c, check=False)


def open_fds(listing: str) -> dict[int, str]:
    """fd -> target from busybox ``ls -l /proc/self/fd`` output, without ls's own descriptor
    of the directory it lists (``/proc/<its pid>/fd``)."""
    fds = {int(m[1]): m[2] for m in re.finditer(r" (\d+) -> (.*)$", listing, re.M)}
    assert 0 in fds, f"not an fd listing:\n{listing}"
    return {fd: target for fd, target in fds.items()
            if not re.fullmatch(r"/proc/\d+/fd", target)}


def assert_stdio_only(listing: str) -> None:
    fds = open_fds(listing)
    assert set(fds) == {0, 1, 2}, f"descriptors beyond stdio in the container: {fds}"


# -- the probe -----------------------------------------------------------------------------------


def test_the_probe_sees_a_descriptor_the_process_did_not_open_itself(env: Env) -> None:
    """The control: a descriptor inherited by ``ls`` (opened by its parent shell) shows."""
    r = env("run", "--rm", env.ref, "sh", "-c", "exec 7</etc/passwd; ls -l /proc/self/fd")
    assert open_fds(r.stdout).get(7) == "/etc/passwd", r.stdout
    with pytest.raises(AssertionError, match="beyond stdio"):
        assert_stdio_only(r.stdout)


# -- what a container inherits -------------------------------------------------------------------


def test_berth_run_gives_the_container_its_stdio_only(env: Env) -> None:
    assert_stdio_only(env("run", "--rm", env.ref, *LIST_FDS).stdout)
    # with -i stdin is a pipe from berth too, and still nothing else
    assert_stdio_only(env("run", "--rm", "-i", env.ref, *LIST_FDS, input="").stdout)
    # with a terminal: runc's console socket and the pty's master stay with the shim
    out = env("run", "--rm", "-t", env.ref, *LIST_FDS).stdout.replace("\r\n", "\n")
    assert_stdio_only(out)
    assert all(t.startswith("/dev/pts/") for t in open_fds(out).values()), out


def test_berth_run_detached_and_exec(env: Env) -> None:
    name = f"leaky-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--name", name, env.ref, "sh", "-c", "ls -l /proc/self/fd; sleep 60")
        assert_stdio_only(env("exec", name, *LIST_FDS).stdout)
        assert_stdio_only(env("exec", "-u", "1000:1000", name, *LIST_FDS).stdout)
        # the detached process's own descriptors, as it listed them into its log
        deadline = time.monotonic() + 30
        while " 2 -> " not in (log := env("logs", name).stdout) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert_stdio_only(log)
    finally:
        env("rm", "-f", name, ok=False)


def test_ctr_run_and_tasks_exec_give_the_container_its_stdio_only(
        daemon: Berthd, busybox_image: ImageInfo, cid: str) -> None:
    ctr = Ctr(daemon.address)
    try:
        assert_stdio_only(ctr("run", "--rm", busybox_image.ref, f"{cid}-rm", *LIST_FDS,
                              input="").stdout)
    finally:  # --rm removes it, unless it failed half-way
        ctr("tasks", "rm", "-f", f"{cid}-rm", check=False)
        ctr("containers", "rm", f"{cid}-rm", check=False)
    ctr("run", "-d", busybox_image.ref, cid, "sleep", "60")
    out = ctr("tasks", "exec", "--exec-id", "probe", cid, *LIST_FDS, input="").stdout
    assert_stdio_only(out)
    out = ctr("tasks", "exec", "--exec-id", "probe2", "--user", "1000", cid, *LIST_FDS,
              input="").stdout
    assert_stdio_only(out)


@pytest.fixture
def runc_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A runc that records, for each command, the descriptors it inherited, then runs the
    real runc: what Berth's shim hands runc (and runc, in turn, could hand on)."""
    record = tmp_path / "runc-fds.jsonl"
    wrapper = tmp_path / "runc-recording"
    wrapper.write_text(
        "#!/usr/bin/python3 -I\n"
        "import json, os, sys\n"
        "fds = {}\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        fds[name] = os.readlink('/proc/self/fd/' + name)\n"
        "    except OSError:\n"
        "        pass  # the listing's own descriptor, closed by now\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'fds': fds}) + '\\n')\n"
        f"os.execv({RUNC!r}, [{RUNC!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    return wrapper, record


def inherited_beyond_stdio(calls: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For each recorded runc command, the descriptors above 2 it inherited."""
    leaks = {}
    for call in calls:
        extra = {fd: target for fd, target in call["fds"].items() if int(fd) > 2}
        if extra:
            leaks[" ".join(call["argv"])] = extra
    return leaks


def test_the_runc_wrapper_records_an_inherited_descriptor(runc_wrapper: tuple[Path, Path]
                                                          ) -> None:
    """The control: a descriptor handed to the wrapper shows in its record."""
    wrapper, record = runc_wrapper
    with open("/etc/hostname", "rb") as leaked:
        subprocess.run([str(wrapper), "--version"], pass_fds=(leaked.fileno(),), check=True,
                       capture_output=True)
        fd = str(leaked.fileno())
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert inherited_beyond_stdio(calls) == {"--version": {fd: "/etc/hostname"}}


def test_berths_shim_hands_runc_its_stdio_only(daemon: Berthd, busybox_image: ImageInfo,
                                               cid: str, runc_wrapper: tuple[Path, Path]
                                               ) -> None:
    wrapper, record = runc_wrapper
    ctr = Ctr(daemon.address)
    ctr("run", "-d", "--runc-binary", str(wrapper), busybox_image.ref, cid, "sleep", "60")
    ctr("tasks", "exec", "--exec-id", "probe", cid, *LIST_FDS, input="")
    ctr("tasks", "kill", "-s", "KILL", cid)
    ctr("tasks", "rm", "-f", cid)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    commands = {a for c in calls for a in c["argv"]} & RUNC_COMMANDS
    assert {"create", "start", "exec"} <= commands, calls
    leaks = inherited_beyond_stdio(calls)
    assert not leaks, f"runc inherited descriptors beyond its stdio: {leaks}"


# -- a working directory through /proc/self/fd ---------------------------------------------------


@pytest.mark.parametrize("cwd", ESCAPES)
def test_berth_run_refuses_a_cwd_into_a_process_directory(env: Env, cwd: str) -> None:
    r = env("run", "--rm", "-w", cwd, env.ref, "ls", "../../..", ok=False)
    one_error_line(r, "working directory", "/proc")
    assert env("ps", "-aq").stdout == ""  # refused before anything was made


def test_berth_exec_refuses_it_too(env: Env) -> None:
    name = f"leaky-{uuid.uuid4().hex[:10]}"
    try:
        env("run", "-d", "--name", name, env.ref, "sleep", "60")
        one_error_line(env("exec", "-w", "/proc/self/fd/7", name, "ls", "../../..", ok=False),
                       "working directory")
        # a real directory under /proc (not a process's) is still a working directory
        assert env("exec", "-w", "/proc/sys", name, "pwd").stdout == "/proc/sys\n"
    finally:
        env("rm", "-f", name, ok=False)


@pytest.fixture(scope="module")
def escaping_images(registry: Registry, busybox_image: ImageInfo) -> dict[str, str]:
    """Images whose WORKDIR leads through /proc/self/fd/7: directly, and by a symbolic link
    in the image."""
    return {
        "direct": push_derived(registry, busybox_image, "leaky/workdir:latest",
                               config={"WorkingDir": "/proc/self/fd/7"}),
        "link": push_derived(registry, busybox_image, "leaky/workdir-link:latest",
                             symlinks={"/work": "/proc/self/fd/7"},
                             config={"WorkingDir": "/work"}),
    }


def shows_the_host(listing: str) -> bool:
    names = set(listing.split())
    return bool(names - IMAGE_ROOT)


def test_an_images_workdir_into_proc_self_fd(env: Env, escaping_images: dict[str, str]
                                             ) -> None:
    env("pull", "--plain-http", "-q", escaping_images["direct"])
    one_error_line(env("run", "--rm", escaping_images["direct"], "ls", "../../..", ok=False),
                   "working directory", "/proc/self/fd/7")
    assert env("ps", "-aq").stdout == ""


def test_a_symlinked_workdir_is_stopped_by_runc(env: Env, escaping_images: dict[str, str]
                                                ) -> None:
    """The link is inside the image, so only runc (at the chdir) can see where it leads."""
    env("pull", "--plain-http", "-q", escaping_images["link"])
    r = env("run", "--rm", escaping_images["link"], "sh", "-c", "pwd; ls ../../..", ok=False)
    if r.returncode == 0:
        assert not shows_the_host(r.stdout), f"the container saw the host:\n{r.stdout}"
    else:
        assert "bin" not in r.stdout.split(), r.stdout
    assert env("ps", "-aq").stdout == ""


@pytest.mark.parametrize("fd", range(3, 11))
def test_ctr_run_with_cwd_in_proc_self_fd(daemon: Berthd, busybox_image: ImageInfo, cid: str,
                                          fd: int) -> None:
    """ctr builds the spec itself: Berth's shim and runc get ``cwd`` as it is."""
    ctr = Ctr(daemon.address)
    r = ctr("run", "--rm", "--cwd", f"/proc/self/fd/{fd}", busybox_image.ref, cid,
            "sh", "-c", "pwd; ls ../../..", check=False, input="")
    if r.returncode == 0:
        assert not shows_the_host(r.stdout.split("\n", 1)[-1]), \
            f"cwd /proc/self/fd/{fd} saw the host:\n{r.stdout}"
    ctr("containers", "rm", cid, check=False)


def test_ctr_tasks_exec_with_cwd_in_proc_self_fd(daemon: Berthd, busybox_image: ImageInfo,
                                                 cid: str) -> None:
    ctr = Ctr(daemon.address)
    ctr("run", "-d", busybox_image.ref, cid, "sleep", "60")
    for fd in range(3, 11):
        r = ctr("tasks", "exec", "--exec-id", f"cwd{fd}", "--cwd", f"/proc/self/fd/{fd}", cid,
                "sh", "-c", "pwd; ls ../../..", check=False, input="")
        if r.returncode == 0:
            assert not shows_the_host(r.stdout.split("\n", 1)[-1]), \
                f"exec cwd /proc/self/fd/{fd} saw the host:\n{r.stdout}"


def test_the_host_check_would_see_the_host() -> None:
    """The control for the checks above: a listing of the host's root is recognised."""
    assert shows_the_host("\n".join(os.listdir("/")))
    assert not shows_the_host("bin\ndev\netc\nproc\nroot\nsys\ntmp\nusr\nvar\n")
