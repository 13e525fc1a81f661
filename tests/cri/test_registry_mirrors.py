"""The CRI's registry configuration: ``[plugins."io.containerd.grpc.v1.cri".registry]
config_path``, directories of ``hosts.toml`` files, as containerd 1.6 reads them. A pull of an
image named for a registry that does not exist goes to the mirror its ``hosts.toml`` names (the
test's own registry over plain HTTP), on both daemons, with the same records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root
from cri_fixtures import CRI, cri_daemons
from images import ImageInfo
from registry import Registry

MIRRORED = "mirror.berth.invalid"


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
            registry: Registry) -> Iterator[dict[str, CRI]]:
    require_root()
    base = tmp_path_factory.mktemp("cri-mirrors")
    certs = base / "certs.d"
    (certs / MIRRORED).mkdir(parents=True)
    (certs / MIRRORED / "hosts.toml").write_text(
        f'server = "https://{MIRRORED}"\n\n'
        f'[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    table = f'  [plugins."io.containerd.grpc.v1.cri".registry]\n    config_path = "{certs}"\n'
    with cri_daemons(base, pause_image, net=5, berthd_extra=table,
                     containerd_extra=table) as clients:
        yield clients


def test_pull_through_a_mirror(daemons: dict[str, CRI], busybox_image: ImageInfo) -> None:
    ref = f"{MIRRORED}/{busybox_image.repo}:{busybox_image.tag}"
    pulled = {name: c.pull(ref) for name, c in daemons.items()}
    assert pulled["berthd"] == pulled["containerd"]
    images = {name: c.status(ref).image for name, c in daemons.items()}
    assert images["berthd"].repo_tags == images["containerd"].repo_tags == [ref]
    assert images["berthd"].repo_digests == images["containerd"].repo_digests
    for c in daemons.values():
        c.remove(ref)


def test_no_mirror_no_pull(daemons: dict[str, CRI], tmp_path: Path) -> None:
    import grpc

    codes = {}
    for name, c in daemons.items():
        with pytest.raises(grpc.RpcError) as err:
            c.pull("elsewhere.berth.invalid/library/busybox:latest")
        codes[name] = err.value.code()
    assert codes["berthd"] == codes["containerd"]
