"""The test infrastructure itself: the loopback registry serves what the image builders promise,
basic auth works, `push_layers` keeps bytes intact, and the real containerd pulls and unpacks
the images into exactly the file trees `ImageInfo` describes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import images
import pytest
from conftest import Ctr
from images import ImageInfo
from reference_containerd import ReferenceContainerd, mounts_under
from registry import Registry


def _manifest_and_config(registry: Registry, info: ImageInfo) -> tuple[dict[str, Any], Any]:
    media_type, manifest = registry.get_manifest(info.repo, info.tag)
    assert media_type.startswith("application/vnd.oci.image.manifest.v1+json")
    config_desc: Any = manifest["config"]
    config_blob = registry.get_blob(info.repo, config_desc["digest"])
    assert "sha256:" + hashlib.sha256(config_blob).hexdigest() == config_desc["digest"]
    return manifest, json.loads(config_blob)


def _layer_tar(registry: Registry, repo: str, descriptor: dict[str, Any]) -> tarfile.TarFile:
    """Download a gzip layer, check its digest and size, open the tar."""
    blob = registry.get_blob(repo, descriptor["digest"])
    assert len(blob) == descriptor["size"]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == descriptor["digest"]
    assert descriptor["mediaType"] == images.LAYER_MEDIA_TYPES["gzip"]
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:")


def test_registry_answers_v2(registry: Registry) -> None:
    status, headers, _body = registry.request("/v2/")
    assert status == 200
    assert headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")
    assert registry.root.is_dir()


def test_busybox_image_is_served(registry: Registry, busybox_image: ImageInfo) -> None:
    manifest, config = _manifest_and_config(registry, busybox_image)
    assert len(manifest["layers"]) == busybox_image.layer_count == 1
    assert config["config"]["Cmd"] == list(busybox_image.cmd) == ["/bin/sh"]
    assert config["os"] == "linux"
    assert config["architecture"] == images.host_architecture()

    with _layer_tar(registry, busybox_image.repo, manifest["layers"][0]) as tar:
        member = tar.getmember("bin/busybox")
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
        assert hashlib.sha256(data).hexdigest() == busybox_image.sha256["/bin/busybox"]
        assert member.mode & 0o777 == 0o755
        sh = tar.getmember("bin/sh")
        assert sh.issym() and sh.linkname == "busybox"


def test_multilayer_image_is_served(registry: Registry, multilayer_image: ImageInfo) -> None:
    info = multilayer_image
    manifest, config = _manifest_and_config(registry, info)
    layers = manifest["layers"]
    assert len(layers) == info.layer_count == 3
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == 3

    for index, descriptor in enumerate(layers):
        blob = registry.get_blob(info.repo, descriptor["digest"])
        # the config's diff_ids are the digests of the uncompressed layers
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_ids[index]

    with _layer_tar(registry, info.repo, layers[info.known_file_layer]) as tar:
        known = tar.getmember(info.known_file.lstrip("/"))
        data = tar.extractfile(known).read()  # type: ignore[union-attr]
        assert len(data) == images.RANDOM_FILE_SIZE
        assert hashlib.sha256(data).hexdigest() == info.known_file_sha256
        hardlinks = [m for m in tar.getmembers() if m.islnk()]
        assert {m.name for m in hardlinks} | {m.linkname for m in hardlinks} == {
            "data/hello.txt",
            "data/hello-hardlink.txt",
        }
        assert tar.getmember("data/hello-symlink.txt").linkname == "hello.txt"
        owned = tar.getmember("data/owned.txt")
        assert (owned.uid, owned.gid, owned.mode & 0o7777) == (1000, 1000, 0o640)

    with _layer_tar(registry, info.repo, layers[-1]) as tar:
        names = set(tar.getnames())
    # a deleted file, a deleted directory, and a file deleted inside a kept directory
    assert {"data/.wh.doomed.txt", "data/.wh.doomed-dir", "data/mixed-dir/.wh.old.txt"} <= names
    assert "data/overwrite.txt" in names


def test_basic_auth_rejects_wrong_password() -> None:
    with Registry(auth=("berth", "right-password")) as reg:
        status, headers, _ = reg.request("/v2/", credentials=None)
        assert status == 401
        assert headers.get("Www-Authenticate", "").startswith("Basic")
        assert reg.request("/v2/", credentials=("berth", "wrong-password"))[0] == 401
        assert reg.request("/v2/", credentials=("nobody", "right-password"))[0] == 401
        assert reg.request("/v2/")[0] == 200  # the registry's own credentials

        # pushing needs the credentials; reading the result with wrong ones is refused
        layer = images.make_tar({"/hello.txt": b"hi\n"})
        images.push_layers(reg, "private/one:v1", [layer])
        path = "/v2/private/one/manifests/v1"
        accept = {"Accept": images.MEDIA_TYPE_MANIFEST}
        assert reg.request(path, headers=accept)[0] == 200
        assert reg.request(path, headers=accept, credentials=("berth", "nope"))[0] == 401
        assert reg.request(path, headers=accept, credentials=None)[0] == 401


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_push_layers_keeps_bytes(registry: Registry, compression: images.Compression) -> None:
    tars = [
        images.make_tar({"/a.txt": b"first\n"}),
        images.make_tar({"/b/c.txt": b"second\n" * 1000}),
    ]
    ref = images.push_layers(registry, f"pushed/layers:{compression}", tars, compression)
    assert ref == f"{registry.host}/pushed/layers:{compression}"

    _media_type, manifest = registry.get_manifest("pushed/layers", compression)
    layers: Any = manifest["layers"]
    config = json.loads(registry.get_blob("pushed/layers", manifest["config"]["digest"]))  # type: ignore[index]
    assert len(layers) == 2
    for tar_bytes, descriptor, diff_id in zip(
        tars, layers, config["rootfs"]["diff_ids"], strict=True
    ):
        assert descriptor["mediaType"] == images.LAYER_MEDIA_TYPES[compression]
        blob = registry.get_blob("pushed/layers", descriptor["digest"])
        assert blob == images.compress(tar_bytes, compression)
        assert diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def test_push_layers_precompressed_blob_is_verbatim(registry: Registry) -> None:
    garbage = b"\x1f\x8b\x08\x00 this is not really gzip"
    images.push_layers(registry, "hostile/garbage:latest", [garbage], precompressed=True)
    _media_type, manifest = registry.get_manifest("hostile/garbage", "latest")
    (descriptor,) = manifest["layers"]  # type: ignore[misc]
    assert descriptor["mediaType"] == images.LAYER_MEDIA_TYPES["gzip"]
    assert registry.get_blob("hostile/garbage", descriptor["digest"]) == garbage


# -- the real containerd pulls the images: they are right by the reference's judgement --------


def _pull_and_mount(client: Ctr, info: ImageInfo, target: Path) -> None:
    client("images", "pull", "--plain-http", info.ref)
    target.mkdir()
    client("images", "mount", info.ref, str(target))


@pytest.mark.needs_root
def test_reference_containerd_unpacks_multilayer(
    reference_containerd: ReferenceContainerd,
    multilayer_image: ImageInfo,
    ctr: type[Ctr],
    tmp_path: Path,
) -> None:
    client = ctr(reference_containerd.address)
    target = tmp_path / "rootfs"
    _pull_and_mount(client, multilayer_image, target)
    try:
        assert (target / "data/hello.txt").read_text() == "hello from berth\n"
        assert images.rootfs_mismatches(target, multilayer_image) == []
        listing = client("images", "ls", "--quiet").stdout.split()
        assert multilayer_image.ref in listing
    finally:
        client("images", "unmount", "--rm", str(target))
    assert mounts_under(target) == []


@pytest.mark.needs_root
def test_reference_containerd_runs_busybox(
    reference_containerd: ReferenceContainerd,
    busybox_image: ImageInfo,
    ctr: type[Ctr],
    tmp_path: Path,
) -> None:
    client = ctr(reference_containerd.address)
    target = tmp_path / "rootfs"
    _pull_and_mount(client, busybox_image, target)
    try:
        assert images.rootfs_mismatches(target, busybox_image) == []
    finally:
        client("images", "unmount", "--rm", str(target))

    run = client("run", "--rm", busybox_image.ref, "fixture-echo", "/bin/echo", "hello")
    assert run.stdout == "hello\n"


def test_ctr_check_reports_failures(ctr: type[Ctr], tmp_path: Path) -> None:
    client = ctr(tmp_path / "no-such.sock", timeout=20)
    failed = client("--connect-timeout", "1s", "version", check=False)
    assert failed.returncode != 0
    with pytest.raises(AssertionError) as err:
        client("--connect-timeout", "1s", "version")
    message = str(err.value)
    assert "exit code" in message and "no-such.sock" in message and "--- stderr ---" in message


def test_rootfs_mismatches_reports_problems(multilayer_image: ImageInfo, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/hello.txt").write_text("wrong\n")
    (tmp_path / "data/doomed.txt").write_text("should be gone\n")
    problems = images.rootfs_mismatches(tmp_path, multilayer_image)
    assert any(p.startswith("/data/hello.txt: content") for p in problems)
    assert any(p.startswith("/data/doomed.txt: should have been deleted") for p in problems)
    assert any(p.startswith("/data/random.bin: cannot read") for p in problems)
