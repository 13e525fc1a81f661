"""A container's labels never become host paths for the `berth` CLI.

The attack: anyone who can reach berthd can write a container's labels (`ctr containers create
--label`, `ctr containers label`). `berth` used to keep a container's log file path in the label
`berth/log-path` and trusted it: `berth logs` printed that file, `berth start` had the shim
append the container's output to it, and `berth rm` deleted it, all as root. Now the log file is
always `<log dir>/<namespace>/<id>.log`, made from the namespace and the validated container id
only; its directories are 0700 and the file 0640, and it is never opened through a symbolic link.

The installed `berth` and the real `ctr` run as child processes against a real berthd (Berth's
own shim), real runc and the busybox image.
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ctr
from test_cli_run import Env

from berth.cli.containers import find_task
from berth.runtime.runtime import Status

pytestmark = pytest.mark.needs_root

SECRET = "host secret: not for containers\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host file the label will point at."""
    path = tmp_path / "victim"
    path.write_text(SECRET)
    return path


@pytest.fixture
def name(env: Env) -> Iterator[str]:
    n = f"lbl-{uuid.uuid4().hex[:10]}"
    yield n
    env("rm", "-f", n, ok=False)


def wait_stopped(env: Env, name: str) -> None:
    """Until the container's task has exited."""
    client = env.client()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = find_task(client, name)
            if task is not None and task.status == Status.STOPPED:
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"{name} did not stop")


def assert_untouched(victim: Path) -> None:
    assert victim.exists(), "the victim file was deleted"
    assert victim.read_text() == SECRET, "the victim file was written to"


def test_a_relabelled_berth_container(env: Env, ctr: type[Ctr], victim: Path, name: str) -> None:
    env("run", "-d", "--name", name, env.ref, "echo", "real output")
    wait_stopped(env, name)
    # Anyone with the socket points the label at a host file.
    ctr(env.daemon.address)("containers", "label", name, f"berth/log-path={victim}")
    assert env("logs", name).stdout == "real output\n"  # its own log, not the victim
    env("start", name)  # its output goes to its own log again
    wait_stopped(env, name)
    assert env("logs", name).stdout == "real output\nreal output\n"
    own_log = env.log_dir / "default" / f"{name}.log"
    assert own_log.is_file()
    env("rm", name)
    assert not own_log.exists()
    assert_untouched(victim)


def test_a_container_made_by_ctr_with_the_label(env: Env, ctr: type[Ctr], victim: Path,
                                                name: str) -> None:
    ctr(env.daemon.address)("containers", "create", "--label", f"berth/log-path={victim}",
                            env.ref, name, "echo", "pwned")
    assert SECRET not in env("logs", name).stdout
    env("start", name)  # detached: the shim writes where berth says
    wait_stopped(env, name)
    assert env("logs", name).stdout == "pwned\n"
    assert env("start", "-a", name).stdout == "pwned\n"
    env("rm", name)
    assert_untouched(victim)
    assert not (env.log_dir / "default" / f"{name}.log").exists()


def test_log_files_are_private_and_never_followed(env: Env, victim: Path, name: str) -> None:
    env("run", "--name", name, env.ref, "echo", "hello")
    log = env.log_dir / "default" / f"{name}.log"
    for directory in (env.log_dir, log.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    # A link planted where the log goes is neither read nor written through, nor is its
    # target deleted.
    log.unlink()
    log.symlink_to(victim)
    r = env("logs", name, ok=False)
    assert r.returncode == 1 and SECRET not in r.stdout and "symbolic link" in r.stderr, r
    r = env("start", "-a", name, ok=False)
    assert r.returncode != 0 and "hello" not in victim.read_text()
    env("rm", name)
    assert not log.is_symlink()
    assert_untouched(victim)
