"""The CRI (runtime.v1) on berthd's socket, against containerd 1.6.20's CRI plugin as the
reference: Version, Status, and the image service (PullImage, ImageStatus, ListImages,
RemoveImage, ImageFsInfo).

Both daemons are driven by the same Python gRPC client of the generated runtime.v1 stubs, and
their answers compared; `ctr -n k8s.io images ls` shows the records each keeps. Each daemon has
an empty CNI configuration directory of its own, so both report the network not ready.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Ctr, require_root
from cri_fixtures import CRI
from daemon import Berthd
from images import ImageInfo
from reference_containerd import ReferenceContainerd

from berth import CONTAINERD_VERSION
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.images import Auth, credentials, split_references, user_of

NS = "k8s.io"


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CRI]]:
    """{"berthd": ..., "containerd": ...}: a berthd and a reference containerd with CRI."""
    require_root()
    base = tmp_path_factory.mktemp("cri")
    cni = base / "cni-empty"
    cni.mkdir()
    config = base / "berthd.toml"
    config.write_text(f'version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\n'
                      f'  conf_dir = "{cni}"\n')
    with Berthd(base / "berthd", config=str(config)) as berthd, \
            ReferenceContainerd(cri=True) as containerd:
        clients = {"berthd": CRI(berthd.address), "containerd": CRI(containerd.address)}
        yield clients
        for c in clients.values():
            c.channel.close()


def _image(msg: pb.Image) -> dict[str, Any]:
    return {"id": msg.id, "repo_tags": sorted(msg.repo_tags),
            "repo_digests": sorted(msg.repo_digests), "size": msg.size,
            "uid": msg.uid.value if msg.HasField("uid") else None, "username": msg.username}


def _images_ls(address: str) -> list[list[str]]:
    out = Ctr(address, NS)("images", "ls").stdout.splitlines()
    return sorted(line.split() for line in out[1:] if line.strip())


def test_version(daemons: dict[str, CRI]) -> None:
    answers = {name: c.runtime.Version(pb.VersionRequest(version="v1"), timeout=10)
               for name, c in daemons.items()}
    ours, theirs = answers["berthd"], answers["containerd"]
    assert (ours.version, ours.runtime_name, ours.runtime_api_version) == \
        (theirs.version, theirs.runtime_name, theirs.runtime_api_version) == \
        ("0.1.0", "containerd", "v1")
    assert theirs.runtime_version.startswith("1.6.20")
    assert ours.runtime_version == CONTAINERD_VERSION


def test_status(daemons: dict[str, CRI]) -> None:
    answers = {name: c.runtime.Status(pb.StatusRequest(), timeout=10).status
               for name, c in daemons.items()}
    assert answers["berthd"] == answers["containerd"]
    conditions = {c.type: c for c in answers["berthd"].conditions}
    assert conditions["RuntimeReady"].status
    network = conditions["NetworkReady"]
    assert (network.status, network.reason, network.message) == (
        False, "NetworkPluginNotReady",
        "Network plugin returns error: cni plugin not initialized")


def test_unimplemented_rpcs(daemons: dict[str, CRI]) -> None:
    """What containerd 1.6 does not serve, Berth does not either."""
    for c in daemons.values():
        with pytest.raises(grpc.RpcError) as err:
            c.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id="x"),
                                          timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_missing_image(daemons: dict[str, CRI]) -> None:
    for c in daemons.values():
        assert c.status("127.0.0.1:1/library/nothing:here") == pb.ImageStatusResponse()
        assert c.status("sha256:" + "0" * 64) == pb.ImageStatusResponse()
        c.remove("127.0.0.1:1/library/nothing:here")  # unknown: success


def test_image_lifecycle(daemons: dict[str, CRI], busybox_image: ImageInfo) -> None:
    ref = busybox_image.ref
    pulled = {name: c.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)),
                                       timeout=120).image_ref
              for name, c in daemons.items()}
    assert pulled["berthd"] == pulled["containerd"]
    image_id = pulled["berthd"]
    assert image_id.startswith("sha256:")

    for query in (ref, image_id, image_id.removeprefix("sha256:")[:12]):
        status = {name: _image(c.status(query).image) for name, c in daemons.items()}
        assert status["berthd"] == status["containerd"], query
    image = status["berthd"]
    assert image["id"] == image_id and image["repo_tags"] == [ref]
    assert len(image["repo_digests"]) == 1
    assert image["repo_digests"][0].startswith(ref.rsplit(":", 1)[0] + "@sha256:")
    assert image["size"] > 0

    listed = {name: [_image(i) for i in c.list()] for name, c in daemons.items()}
    assert listed["berthd"] == listed["containerd"] == [image]

    berthd_addr, containerd_addr = daemons["berthd"].address, daemons["containerd"].address
    rows = _images_ls(berthd_addr)
    assert rows == _images_ls(containerd_addr)
    assert sorted(r[0] for r in rows) == sorted([image_id, ref, image["repo_digests"][0]])
    assert all(r[-1] == "io.cri-containerd.image=managed" for r in rows)

    for name, c in daemons.items():
        info = c.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30).image_filesystems
        assert len(info) == 1, name
        assert Path(info[0].fs_id.mountpoint).name == "io.containerd.snapshotter.v1.overlayfs"
        assert info[0].timestamp > 0
    ours = daemons["berthd"].images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30)
    assert ours.image_filesystems[0].used_bytes.value > 0
    assert ours.image_filesystems[0].inodes_used.value > 0

    for c in daemons.values():
        c.remove(ref)
        assert c.status(ref) == pb.ImageStatusResponse()
        assert c.status(image_id) == pb.ImageStatusResponse()
        assert c.list() == []
        c.remove(image_id)  # gone already: success
    assert _images_ls(berthd_addr) == _images_ls(containerd_addr) == []


def test_credentials_as_containerd_parses_them() -> None:
    assert credentials(None, "example.com") is None
    assert credentials(Auth(username="u", password="p"), "example.com") == ("u", "p")
    assert credentials(Auth(identity_token="t"), "example.com") == ("", "t")
    encoded = base64.b64encode(b"user:se:cret").decode()
    assert credentials(Auth(auth=encoded), "example.com") == ("user", "se:cret")
    assert credentials(Auth(username="u", server_address="https://other.io"),
                       "example.com") is None
    assert credentials(Auth(username="u", server_address="https://index.docker.io/v1/"),
                       "docker.io") == ("u", "")


def test_image_user_and_references() -> None:
    assert user_of("") == (None, "")
    assert user_of("1000:1000") == (1000, "")
    assert user_of("nobody:nogroup") == (None, "nobody")
    digest = "sha256:" + "a" * 64
    tags, digests = split_references([digest, "example.com/a/b:1", f"example.com/a/b@{digest}"])
    assert tags == ["example.com/a/b:1"] and digests == [f"example.com/a/b@{digest}"]
