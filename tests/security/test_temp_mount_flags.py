"""Temporary mounts (a snapshot shown to berthd or the CLI: unpacking, reading an image's
users, computing a diff) are ``nosuid,nodev``: a setuid binary or device node of an image
takes no effect through them, whoever reaches the mount point. Bind mounts get per-mount
flags only through a remount, which Berth now does for every such flag, not just ``ro``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from berth.mount import Mount, temp_mount

pytestmark = pytest.mark.needs_root


def mount_options(target: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                return set(fields[5].split(","))
    raise AssertionError(f"{target} is not mounted")


@pytest.mark.parametrize("kind", ["bind", "overlay"])
def test_temp_mounts_are_nosuid_nodev(tmp_path: Path, kind: str) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    suid = lower / "suid-true"
    shutil.copy("/bin/true", suid)
    os.chmod(suid, 0o4755)
    if kind == "bind":
        mounts = [Mount("bind", str(lower), ("rbind", "ro"))]
    else:
        (tmp_path / "upper").mkdir()
        (tmp_path / "work").mkdir()
        mounts = [Mount("overlay", "overlay", (
            f"lowerdir={lower}", f"upperdir={tmp_path / 'upper'}",
            f"workdir={tmp_path / 'work'}"))]
    with temp_mount(mounts, parent=str(tmp_path)) as root:
        options = mount_options(root)
        assert {"nosuid", "nodev"} <= options, options
        # The setuid bit is still there to read (a diff must see it), but cannot take effect.
        assert os.stat(Path(root) / "suid-true").st_mode & 0o4000
        r = subprocess.run(["findmnt", "-no", "OPTIONS", root], capture_output=True, text=True,
                           check=True)
        assert "nosuid" in r.stdout
