"""The default OCI runtime spec and the options that shape it (berth.oci.spec): containerd 1.6's
defaults, image configuration, user and group resolution inside an image's root filesystem (and
not outside it), and parity with the spec the real `ctr` builds."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Ctr
from daemon import Berthd
from images import ImageInfo
from registry import Registry

from berth import errdefs
from berth.oci import spec as oci
from berth.oci import users
from berth.oci.spec import (
    generate_spec,
    replace_or_append_env,
    with_additional_gids,
    with_cwd,
    with_env,
    with_host_network,
    with_hostname,
    with_image_config,
    with_mounts,
    with_process_args,
    with_root_path,
    with_tty,
    with_user,
)
from berth.oci.users import resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment, then malformed lines that must not resolve to anything
evil:x:notanumber:0::/:/bin/sh
short:x
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
alice:x:2000:2000:a second alice: the first one wins:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
users:x:100:alice
docker:x:999:alice,bob
alice:x:1000:alice
"""


def rootfs_with(tmp_path: Path, passwd: str | None = PASSWD,
                group: str | None = GROUP) -> str:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if passwd is not None:
        (root / "etc/passwd").write_text(passwd)
    if group is not None:
        (root / "etc/group").write_text(group)
    return str(root)


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    return rootfs_with(tmp_path)


def user_of(spec: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = spec["process"]["user"]
    return user


# -- defaults ----------------------------------------------------------------------------------


def test_default_spec_is_containerds() -> None:
    s = generate_spec("default", "c1")
    assert s["ociVersion"] == "1.0.2-dev"
    p = s["process"]
    assert p["user"] == {"uid": 0, "gid": 0}
    assert p["cwd"] == "/" and p["noNewPrivileges"] is True
    assert "terminal" not in p and "args" not in p and "env" not in p
    caps = p["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert s["root"] == {"path": "rootfs"}
    mounts = {m["destination"]: m for m in s["mounts"]}
    assert list(mounts) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                            "/run"]
    assert mounts["/sys"]["options"][-1] == "ro"
    assert mounts["/dev"]["type"] == "tmpfs" and mounts["/dev/pts"]["type"] == "devpts"
    linux = s["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert linux["cgroupsPath"] == "/default/c1"
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    devices = linux["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in devices
    json.dumps(s)  # JSON-ready


def test_cgroups_path_follows_namespace_and_refuses_paths() -> None:
    assert generate_spec("team-a", "web")["linux"]["cgroupsPath"] == "/team-a/web"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(errdefs.InvalidArgument):
            generate_spec("default", bad)
    with pytest.raises(errdefs.InvalidArgument):
        generate_spec("Bad Namespace", "c1")


def test_each_call_builds_a_fresh_spec_and_options_never_mutate() -> None:
    a = generate_spec("default", "c1")
    a["mounts"].clear()
    a["process"]["capabilities"]["bounding"].clear()
    b = generate_spec("default", "c1")
    assert len(b["mounts"]) == 7 and len(b["process"]["capabilities"]["bounding"]) == 14
    before = json.dumps(b, sort_keys=True)
    opts = oci.compose(with_env(["A=1"]), with_tty(), with_mounts(["/a:/b"]),
                       with_process_args("x"), with_cwd("/w"), with_hostname("h"),
                       with_host_network("h"), with_user("5:6"), with_root_path("/r"))
    out = opts(b)
    assert json.dumps(b, sort_keys=True) == before
    assert out is not b and out["process"]["env"] == ["A=1", "TERM=xterm", "HOSTNAME=h"]


# -- environment and process -------------------------------------------------------------------


def test_replace_or_append_env() -> None:
    assert replace_or_append_env(["A=1", "B=2", "C=3"], ["B=x", "D=4", "A", "D=5"]) == [
        "B=x", "C=3", "D=5"]
    assert replace_or_append_env(["A=1"], ["A", "A=2"]) == ["A=2"]
    assert replace_or_append_env([], ["Z"]) == []
    assert replace_or_append_env(["A=1=2"], ["A=3=4"]) == ["A=3=4"]


def test_with_env_rejects_nonsense() -> None:
    for bad in ("", "=x", "A\0=b"):
        with pytest.raises(errdefs.InvalidArgument):
            with_env([bad])
    s = with_env([])(generate_spec("default", "c"))
    assert "env" not in s["process"]


def test_process_options() -> None:
    s = oci.compose(with_process_args("/bin/echo", "hi"), with_cwd("/tmp"), with_tty(),
                    with_hostname("box"))(generate_spec("default", "c"))
    assert s["process"]["args"] == ["/bin/echo", "hi"]
    assert s["process"]["cwd"] == "/tmp" and s["process"]["terminal"] is True
    assert s["process"]["env"] == ["TERM=xterm"] and s["hostname"] == "box"
    with pytest.raises(errdefs.InvalidArgument):
        with_process_args()
    with pytest.raises(errdefs.InvalidArgument):
        with_cwd("relative")
    for bad in ("", "a b", "x" * 65, "a/b"):
        with pytest.raises(errdefs.InvalidArgument):
            with_hostname(bad)
    assert with_root_path("/abs", readonly=True)({})["root"] == {"path": "/abs",
                                                                 "readonly": True}


def test_bind_mounts() -> None:
    s = with_mounts(["/src:/dst", "/a:/b:ro", "/c:/d:rw"])(generate_spec("default", "c"))
    assert s["mounts"][-3:] == [
        {"destination": "/dst", "type": "bind", "source": "/src", "options": ["rbind", "rw"]},
        {"destination": "/b", "type": "bind", "source": "/a", "options": ["rbind", "ro"]},
        {"destination": "/d", "type": "bind", "source": "/c", "options": ["rbind", "rw"]},
    ]
    for bad in ("/only", "rel:/dst", "/src:rel", "/a:/b:rx", "/a:/b:ro:x", ":/b", "/a:"):
        with pytest.raises(errdefs.InvalidArgument):
            with_mounts([bad])


def test_host_network() -> None:
    s = with_host_network()(generate_spec("default", "c"))
    assert "network" not in [n["type"] for n in s["linux"]["namespaces"]]
    assert [m["destination"] for m in s["mounts"][-2:]] == ["/etc/hosts", "/etc/resolv.conf"]
    assert all(m["options"] == ["rbind", "ro"] for m in s["mounts"][-2:])
    assert "env" not in s["process"]
    assert with_host_network("myhost")(generate_spec("default", "c"))["process"]["env"] == [
        "HOSTNAME=myhost"]


# -- image configuration -----------------------------------------------------------------------


def test_image_config_entrypoint_cmd_env_cwd(rootfs: str) -> None:
    doc = {"architecture": "amd64", "config": {
        "Env": ["PATH=/image/bin", "LANG=C.UTF-8"], "Entrypoint": ["/entry", "-x"],
        "Cmd": ["serve"], "WorkingDir": "/srv"}}
    s = generate_spec("default", "c", with_env(["LANG=de", "EXTRA=1"]),
                      with_image_config(doc, rootfs))
    p = s["process"]
    # The image's variables, with what the spec already had over them.
    assert p["env"] == ["PATH=/image/bin", "LANG=de", "EXTRA=1"]
    assert p["args"] == ["/entry", "-x", "serve"] and p["cwd"] == "/srv"
    assert p["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}
    s = with_image_config(doc, rootfs, args=["other", "arg"])(s)
    assert s["process"]["args"] == ["/entry", "-x", "other", "arg"]


def test_image_config_defaults(rootfs: str) -> None:
    s = generate_spec("default", "c", with_image_config({"config": {"Cmd": ["/bin/sh"]}}))
    assert s["process"]["env"] == [oci.DEFAULT_PATH_ENV]
    assert s["process"]["cwd"] == "/" and s["process"]["args"] == ["/bin/sh"]
    assert generate_spec("default", "c", with_image_config({}))["process"]["args"] == []


def test_image_config_user_with_groups(rootfs: str) -> None:
    s = generate_spec("default", "c",
                      with_image_config({"config": {"User": "alice"}}, rootfs))
    assert user_of(s) == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 100, 999]}
    s = generate_spec("default", "c",
                      with_image_config({"config": {"User": "1001:docker"}}, rootfs))
    assert user_of(s) == {"uid": 1001, "gid": 999, "additionalGids": [999]}


@pytest.mark.parametrize("bad", [
    {"config": {"Env": "PATH=/bin"}}, {"config": {"Cmd": [1]}}, {"config": {"User": 0}},
    {"config": {"WorkingDir": ["/"]}}, {"config": ["x"]},
])
def test_image_config_with_wrong_types_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        with_image_config(bad)


# -- users -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "expected"), [
    ("alice", (1000, 1000)),  # the first entry of that name wins
    ("bob", (1001, 100)),
    ("root", (0, 0)),
    ("1000", (1000, 1000)),  # a uid takes its primary group from /etc/passwd
    ("4242", (4242, 0)),  # ... or 0 when it is not listed
    ("alice:docker", (1000, 999)),
    ("alice:5", (1000, 5)),
    ("7:users", (7, 100)),
    ("1000:100", (1000, 100)),
    ("+12", (12, 0)),
])
def test_resolve_user(rootfs: str, user: str, expected: tuple[int, int]) -> None:
    assert resolve_user(user, rootfs) == expected


def test_malformed_passwd_lines_resolve_nothing(rootfs: str) -> None:
    with pytest.raises(errdefs.NotFound):
        resolve_user("evil", rootfs)
    with pytest.raises(errdefs.NotFound):
        resolve_user("short", rootfs)


def test_missing_users_and_groups_are_clear_errors(tmp_path: Path, rootfs: str) -> None:
    with pytest.raises(errdefs.NotFound, match="user 'ghost' not found in the image's /etc/passwd"):
        resolve_user("ghost", rootfs)
    with pytest.raises(errdefs.NotFound, match="group 'ghosts' not found"):
        resolve_user("alice:ghosts", rootfs)
    with pytest.raises(errdefs.NotFound, match="no /etc/passwd"):
        resolve_user("alice", None)
    bare = rootfs_with(tmp_path / "bare", passwd=None, group=None)
    with pytest.raises(errdefs.NotFound, match="no /etc/passwd"):
        resolve_user("alice", bare)
    with pytest.raises(errdefs.NotFound, match="no /etc/group"):
        resolve_user("1:staff", bare)
    assert resolve_user("1000", bare) == (1000, 0)
    assert resolve_user("1000:5", None) == (1000, 5)  # numbers need no files


@pytest.mark.parametrize("bad", ["", ":", "a:", ":b", "a:b:c", "-1", "4294967296", "1:-2"])
def test_invalid_user_strings(rootfs: str, bad: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        resolve_user(bad, rootfs)


def test_relative_rootfs_is_refused() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="absolute"):
        resolve_user("alice", "relative/rootfs")


def test_with_user_resets_groups_and_keeps_the_primary(rootfs: str) -> None:
    s = generate_spec("default", "c", with_additional_gids("alice", rootfs))
    # The group named like the user is not supplementary, as in containerd.
    assert user_of(s)["additionalGids"] == [0, 100, 999]
    s = with_user("bob", rootfs)(s)
    assert user_of(s) == {"uid": 1001, "gid": 100, "additionalGids": [100]}
    s = with_additional_gids("1001", rootfs)(s)  # by uid: bob is in docker
    assert user_of(s) == {"uid": 1001, "gid": 100, "additionalGids": [100, 999]}
    s = with_additional_gids("4242", rootfs)(s)  # unknown uid: the primary only
    assert user_of(s)["additionalGids"] == [100]


# -- a hostile image ---------------------------------------------------------------------------


@pytest.fixture
def host_passwd(tmp_path: Path) -> Path:
    """A file outside the rootfs that a hostile image would like to be read as its passwd."""
    outside = tmp_path / "host" / "etc"
    outside.mkdir(parents=True)
    (outside / "passwd").write_text("alice:x:0:0:host root:/:/bin/sh\n")
    (outside / "group").write_text("wheel:x:0:alice\n")
    return outside


def test_passwd_symlink_to_an_absolute_host_path_stays_inside(
        tmp_path: Path, host_passwd: Path) -> None:
    root = Path(rootfs_with(tmp_path, passwd=None, group=None))
    (root / "etc/passwd").symlink_to(host_passwd / "passwd")  # absolute: re-rooted
    (root / "etc/group").symlink_to(host_passwd / "group")
    with pytest.raises(errdefs.NotFound):
        resolve_user("alice", str(root))
    assert users.read_group(str(root)) is None


def test_etc_symlink_climbing_out_stays_inside(tmp_path: Path, host_passwd: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to(os.path.relpath(host_passwd, root) + "/../../../../..")
    with pytest.raises(errdefs.NotFound):
        resolve_user("alice", str(root))
    (root / "etc").unlink()
    (root / "etc").symlink_to("../host/etc")  # ".." stops at the root
    with pytest.raises(errdefs.NotFound):
        resolve_user("alice", str(root))


def test_symlinks_inside_the_rootfs_are_followed(tmp_path: Path) -> None:
    root = Path(rootfs_with(tmp_path, passwd=None, group=None))
    (root / "data").mkdir()
    (root / "data/passwd").write_text("carol:x:77:78::/:/bin/sh\n")
    (root / "etc/passwd").symlink_to("/data/passwd")
    assert resolve_user("carol", str(root)) == (77, 78)


def test_passwd_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    root = Path(rootfs_with(tmp_path, passwd=None))
    os.mkfifo(root / "etc/passwd")  # opening a FIFO must not block
    done = threading.Event()
    errors: list[BaseException] = []

    def lookup() -> None:
        try:
            resolve_user("alice", str(root))
        except BaseException as err:
            errors.append(err)
        done.set()

    threading.Thread(target=lookup, daemon=True).start()
    assert done.wait(5), "reading a FIFO passwd blocked"
    assert isinstance(errors[0], errdefs.InvalidArgument)
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="not a regular file"):
        resolve_user("alice", str(root))


def test_huge_passwd_is_refused(tmp_path: Path) -> None:
    root = Path(rootfs_with(tmp_path, passwd=None))
    with open(root / "etc/passwd", "wb") as f:
        f.truncate(users.MAX_ACCOUNT_FILE + 1)
    with pytest.raises(errdefs.InvalidArgument, match="larger than"):
        resolve_user("alice", str(root))


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = Path(rootfs_with(tmp_path, passwd=None))
    (root / "etc/passwd").symlink_to("passwd")
    with pytest.raises(errdefs.InvalidArgument, match="too many levels"):
        resolve_user("alice", str(root))


# -- parity with the spec the real ctr builds --------------------------------------------------


def _image_config(registry: Registry, image: ImageInfo) -> dict[str, Any]:
    _, manifest = registry.get_manifest(image.repo, image.tag)
    config = manifest["config"]
    assert isinstance(config, dict)
    doc: dict[str, Any] = json.loads(registry.get_blob(image.repo, config["digest"]))
    return doc


@pytest.mark.needs_root
def test_same_spec_as_ctr(berthd: Berthd, registry: Registry, busybox_image: ImageInfo,
                          tmp_path: Path) -> None:
    """`ctr containers create` builds its spec client-side with containerd 1.6.20's options;
    Berth's, from the same image config and rootfs, must be the same document."""
    c = Ctr(berthd.address)
    c("images", "pull", "--plain-http", busybox_image.ref)
    rootfs = rootfs_with(tmp_path, passwd=busybox_image.files["/etc/passwd"].decode(),
                         group=busybox_image.files["/etc/group"].decode())
    config = _image_config(registry, busybox_image)

    def ctr_spec(cid: str, *args: str) -> dict[str, Any]:
        c("containers", "create", "--snapshotter", "overlayfs", *args)
        spec: dict[str, Any] = json.loads(c("containers", "info", cid).stdout)["Spec"]
        return spec

    assert ctr_spec("plain", busybox_image.ref, "plain") == generate_spec(
        "default", "plain", with_image_config(config, rootfs))

    assert ctr_spec(
        "shaped", "--tty", "--env", "A=b", "--env", "PATH=/opt/bin", "--cwd", "/tmp",
        "--mount", "type=bind,src=/srv,dst=/mnt,options=rbind:ro", "--net-host",
        busybox_image.ref, "shaped", "echo", "hi",
    ) == generate_spec(
        "default", "shaped", with_image_config(config, rootfs), with_process_args("echo", "hi"),
        with_cwd("/tmp"), with_env(["A=b", "PATH=/opt/bin"]), with_mounts(["/srv:/mnt:ro"]),
        with_tty(), with_host_network(os.uname().nodename),
    )
