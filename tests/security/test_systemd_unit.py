"""contrib/systemd/berthd.service: containerd's unit settings, a unit systemd accepts once
``make install-systemd`` has rendered it, and the property ``KillMode=process`` exists for:
stopping or restarting berthd leaves running containers and their shims alone.

systemd is not PID 1 on the test machines, so the stop is done as systemd would do it with this
unit: the unit's kill signal to berthd's main process only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Berthd
from images import ImageInfo
from test_ctr_tasks import Session, is_running, shim_pids, wait_until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "systemd" / "berthd.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each mapping a key to its values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def test_unit_has_containerds_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]
    expected = {
        "Type": "notify",
        "KillMode": "process",
        "Delegate": "yes",
        "Restart": "always",
        "RestartSec": "5",
        "LimitNOFILE": "infinity",
        "LimitNPROC": "infinity",
        "LimitCORE": "infinity",
        "TasksMax": "infinity",
        "OOMScoreAdjust": "-999",
        "ExecStartPre": "-/sbin/modprobe overlay",
        "ExecStart": '"@BERTHD@"',
    }
    assert {k: svc.get(k) for k in expected} == {k: [v] for k, v in expected.items()}
    assert "KillSignal" not in svc  # SIGTERM: berthd's clean shutdown
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network.target" in unit["Unit"]["After"][0]


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The unit as ``make install-systemd`` writes it, into a directory of this test."""
    done = subprocess.run(["make", "-s", "-C", str(REPO), "install-systemd",
                           f"SYSTEMD_UNIT_DIR={tmp_path}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return tmp_path / "berthd.service"


def test_installed_unit_points_at_this_berthd_and_verifies(installed: Path) -> None:
    berthd = REPO / ".venv" / "bin" / "berthd"
    assert parse_unit(installed.read_text())["Service"]["ExecStart"] == [f'"{berthd}"']
    assert oct(installed.stat().st_mode & 0o777) == "0o644"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True,
                          timeout=60, check=False)
    # verify exits 0 on unknown keys and bad values too: it only warns, naming the unit.
    complaints = [line for line in done.stderr.splitlines() if "berthd.service" in line]
    assert done.returncode == 0 and complaints == [], done.stderr


@pytest.mark.needs_root
def test_berthd_tells_systemd_it_is_ready(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Type=notify: systemd waits for READY=1 on $NOTIFY_SOCKET.
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with Berthd(tmp_path / "d") as d:
            assert sock.recv(4096) == b"READY=1"
            assert d.proc is not None and d.proc.poll() is None
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.fixture
def session(tmp_path: Path, busybox_image: ImageInfo) -> Iterator[Session]:
    with Berthd(tmp_path / "d") as d:
        s = Session(d, "berth", busybox_image)
        try:
            s.pull()
            yield s
        finally:
            s.cleanup()


@pytest.mark.needs_root
def test_stop_as_the_unit_does_leaves_containers_running(session: Session) -> None:
    s = session
    assert service()["KillMode"] == ["process"]  # systemd signals the main process alone
    cid = s.run_detached("unit", "sleep", "1000")
    pid = s.tasks()[cid][0]
    shims = shim_pids(s.berthd.address, cid)
    assert shims

    proc = s.berthd.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)  # KillSignal's default
    assert proc.wait(timeout=20) == 0
    assert not os.path.exists(s.berthd.address)  # it shut down cleanly
    assert is_running(pid) and all(is_running(p) for p in shims), (pid, shims)

    s.berthd.proc = None
    s.berthd.start()  # Restart=always, after RestartSec
    assert wait_until(lambda: s.tasks().get(cid) == (pid, "RUNNING"), 5), s.tasks()
