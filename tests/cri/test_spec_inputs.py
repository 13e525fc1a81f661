"""What the CRI's spec builder does with kubelet-given host paths and with settings it cannot
honour: a mount's host path is made when missing and mounted with its symlinks resolved (as
containerd resolves it, so the path checked and the path mounted are one); a host path that
cannot be looked at is an error; and a pod asking for user namespaces, or a mount asking to be
id-mapped, recursively read-only or an image, is refused rather than run without it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri import spec as crispec


def test_host_paths_are_made_and_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert crispec._host_source(str(tmp_path / "link")) == str(real)
    made = tmp_path / "a" / "b"
    assert crispec._host_source(str(made)) == str(made)
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o755 & ~_umask()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    (tmp_path / "nowhere").write_text("a file, not a directory")
    with pytest.raises(errdefs.Unknown, match="failed to"):
        crispec._host_source(str(tmp_path / "dangling"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _spec() -> dict[str, Any]:
    return {"linux": {"namespaces": []}}


def test_pod_user_namespaces_are_refused() -> None:
    options = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.POD))
    with pytest.raises(errdefs.NotImplementedByBerth, match="user namespaces"):
        crispec._namespaces(_spec(), options)
    host = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE))
    crispec._namespaces(_spec(), host)  # the host's user namespace: what Berth runs


@pytest.mark.parametrize("mount", [
    pb.Mount(container_path="/data", host_path="/tmp", uidMappings=[
        pb.IDMapping(host_id=1000, container_id=0, length=1)]),
    pb.Mount(container_path="/data", host_path="/tmp", recursive_read_only=True,
             readonly=True),
    pb.Mount(container_path="/data", image=pb.ImageSpec(image="busybox")),
], ids=["id-mapped", "recursive-read-only", "image"])
def test_mounts_berth_cannot_honour_are_refused(mount: pb.Mount) -> None:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                command=["true"], mounts=[mount])
    with pytest.raises(errdefs.NotImplementedByBerth, match="are not supported"):
        crispec.container_spec(
            "c" * 64, config, pb.PodSandboxConfig(), {}, namespace="k8s.io",
            sandbox_id="s" * 64, sandbox_pid=1, rootfs=None, sandbox_files={},
            shm_path="/dev/shm", image_name="busybox", restrict_oom_score_adj=True)
