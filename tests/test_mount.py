"""Mounting: overlays of more layers than one page of mount options can name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.mount import Mount, mount, unmount

pytestmark = pytest.mark.needs_root


def test_overlay_of_many_layers_mounts(tmp_path: Path) -> None:
    base = tmp_path / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    layers = []
    for i in range(120):
        fs = base / str(i) / "fs"
        fs.mkdir(parents=True)
        (fs / f"file-{i}").write_text(str(i))
        layers.append(str(fs))
    (base / "top" / "fs").mkdir(parents=True)
    (base / "top" / "work").mkdir()
    (base / "0" / "fs" / "shadowed").write_text("lowest")
    (base / "119" / "fs" / "shadowed").write_text("highest")
    lowers = ":".join(reversed(layers))  # the nearest layer first
    m = Mount("overlay", "overlay", (f"workdir={base / 'top' / 'work'}",
                                     f"upperdir={base / 'top' / 'fs'}", f"lowerdir={lowers}"))
    assert sum(len(o) + 1 for o in m.options) > os.sysconf("SC_PAGE_SIZE")
    target = tmp_path / "rootfs"
    target.mkdir()
    cwd = os.getcwd()
    mount(m, str(target))
    try:
        assert os.getcwd() == cwd  # the daemon's working directory is never changed
        assert (target / "file-0").read_text() == "0"
        assert (target / "file-119").read_text() == "119"
        assert (target / "shadowed").read_text() == "highest"
        (target / "new").write_text("upper")
        assert (base / "top" / "fs" / "new").read_text() == "upper"
    finally:
        unmount(str(target))


def test_overlay_error_names_the_failure(tmp_path: Path) -> None:
    base = tmp_path / "s"
    lowers = ":".join(str(base / f"missing-{i:03d}" / "fs") for i in range(200))
    target = tmp_path / "rootfs"
    target.mkdir()
    with pytest.raises(Exception, match="mount overlay"):
        mount(Mount("overlay", "overlay", (f"lowerdir={lowers}",)), str(target))
    assert not os.path.ismount(target)
