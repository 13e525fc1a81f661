"""A real berthd for tests: started as a subprocess on a private root, state and socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTHD = REPO / ".venv" / "bin" / "berthd"


def mounts_under(*prefixes: str) -> list[str]:
    """Mount points below any of ``prefixes``, deepest first."""
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if any(target == p or target.startswith(p.rstrip("/") + "/") for p in prefixes):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def unmount_under(*prefixes: str) -> None:
    for target in mounts_under(*prefixes):
        subprocess.run(["umount", "-l", target], check=False)


class Berthd:
    """``with Berthd(tmp) as d:`` runs berthd until the block ends; ``d.restart()`` stops it
    (TERM, or KILL with ``hard=True``) and starts it again on the same root."""

    def __init__(self, base: Path, *, config: str | None = None,
                 log_level: str = "debug") -> None:
        self.base = Path(base)
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.address = str(self.base / "berthd.sock")
        self.log_path = self.base / "berthd.log"
        self.config = config
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(BERTHD), "--root", str(self.root), "--state", str(self.state),
               "--address", self.address, "--log-level", self.log_level]
        if self.config:
            cmd += ["--config", self.config]
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berthd exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.address) and self._answers():
                return
            time.sleep(0.05)
        self.stop(hard=True)
        raise RuntimeError(f"berthd did not start within 30s:\n{self.log()}")

    def _answers(self) -> bool:
        r = subprocess.run(["ctr", "--address", self.address, "--timeout", "2s", "version"],
                           capture_output=True, check=False)
        return r.returncode == 0

    def stop(self, *, hard: bool = False) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart(self, *, hard: bool = False) -> None:
        self.stop(hard=hard)
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Berthd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        unmount_under(str(self.base))
        if exc[0] is not None:
            sys.stderr.write(f"--- berthd log ---\n{self.log()}\n")
