"""Pulling a hostile image cannot touch a host file (CVE-2021-32760 and the layer-breakout
family), through the real clients.

CVE-2021-32760: containerd before 1.4.8/1.5.4, unpacking a layer, chmodded a hard link to a
symlink with ``os.Chmod``, which follows the symlink: a layer holding ``s -> /etc/shadow`` and
a hard link ``h -> s`` with mode 04777 made the host's file setuid and world writable. Its
relatives set other metadata (owner, times, xattrs) through a symlink, or write, link, whiteout
or create devices through one, or climb out with ``..`` or absolute names.

tests/test_diff_hostile.py drives the applier in-process with every layer of
:func:`hostile_layers.hostile_layers`. Here the same layers, and the metadata-through-symlink
cases of :func:`hostile_layers.metadata_through_symlink_cases`, are pushed to a real registry
as images and pulled by a real berthd:

* with ``berth pull`` (berthd fetches and unpacks: its transfer service and unpacker), every
  case of the corpus;
* with ``ctr images pull`` (ctr fetches and drives berthd's Diff and Snapshots services, as it
  would containerd's), the metadata-through-symlink cases, on both snapshotters.

The layers aim at a sentinel directory (a file 0640 with an xattr, a directory, a symlink)
outside berthd's root. After every pull: the sentinel tree is exactly as before (modes, owners,
times, xattrs, contents, link counts), so is /etc/passwd, nothing appeared in berthd's
directories outside its snapshot roots and blob store, and the store is consistent: a layer
refused (the decision is test_diff_hostile's ``REFUSED``, the same applier's) fails the pull
with one clear line and leaves no image and no snapshot for it (nor an extraction snapshot); a
layer contained gives an image whose files show it was applied inside the root.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hostile_layers
import images
import pytest
from conftest import Ctr, sha256_of
from ctr_views import image_names
from daemon import Berthd
from images import ImageInfo
from registry import Registry, loopback_env
from test_ctr_robustness import snapshot_viewed
from test_diff_hostile import POSTCONDITIONS, REFUSED

pytestmark = pytest.mark.needs_root

REPO = Path(__file__).resolve().parent.parent.parent
BERTH = REPO / ".venv" / "bin" / "berth"
SNAPSHOTTERS = ("overlayfs", "native")
CORPUS = [name for name, _, _ in hostile_layers.hostile_layers("/sandbox/outside")]
METADATA = [name for name, _, _, _ in
            hostile_layers.metadata_through_symlink_cases("/sandbox/outside")]


# -- the sandbox and what may not change -------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the layers aim at: its secret file carries an xattr, so that one set
    through a symlink would show."""
    outside = hostile_layers.make_sentinel(tmp_path_factory.mktemp("sentinel"))
    os.setxattr(outside / "secret", "user.sentinel", b"1")
    return outside


# Paths under berthd's base that a pull may add or remove, outside the snapshot roots (which
# are not listed): blobs and ingests, databases and their journals, snapshot directories.
_MAY_CHANGE = re.compile(
    r"root/io\.containerd\.content\.v1\.content/(blobs/sha256/[0-9a-f]{64}|ingest(/.*)?)"
    r"|root/io\.containerd\.snapshotter\.v1\.overlayfs/snapshots/\d+(/fs|/work(/work)?)?"
    r"|root/io\.containerd\.snapshotter\.v1\.native/snapshots/\d+"
    r"|root/tmpmounts(/[^/]+)?"
    r"|.*\.db(-wal|-shm|-journal)?")


def _listing(base: Path) -> set[str]:
    """Every path under ``base`` (relative), snapshot roots not entered."""
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        found.update(os.path.normpath(os.path.join(rel, name)) for name in dirs + files)
        if re.fullmatch(r".*/io\.containerd\.snapshotter\.v1\.overlayfs/snapshots/\d+", rel):
            dirs[:] = [d for d in dirs if d != "fs"]
        elif re.fullmatch(r".*/io\.containerd\.snapshotter\.v1\.native/snapshots", rel) \
                or rel.endswith("tmpmounts"):
            dirs[:] = []
    return found


class Untouched:
    """What a hostile pull may not change, recorded before it."""

    def __init__(self, d: Berthd, sentinel: Path) -> None:
        self.d, self.sentinel = d, sentinel
        # Where a relative escape from a snapshot root, a temporary mount or the daemon's
        # directories would land.
        self.stray = [Path(tempfile.gettempdir()) / "outside", Path("/outside"),
                      d.base.parent / "outside", d.base / "outside", d.root / "outside",
                      d.state / "outside"]
        assert [p for p in self.stray if os.path.lexists(p)] == []
        self.tree = hostile_layers.snapshot_tree(str(sentinel))
        self.listing = _listing(d.base)
        self.passwd = os.stat("/etc/passwd")

    def check(self) -> None:
        after = hostile_layers.snapshot_tree(str(self.sentinel))
        changed = {p: (self.tree.get(p), after.get(p)) for p in {*self.tree, *after}
                   if self.tree.get(p) != after.get(p)}
        assert changed == {}, f"the sentinel changed (before, after): {changed}"
        assert os.stat("/etc/passwd") == self.passwd
        assert [p for p in self.stray if os.path.lexists(p)] == []
        moved = sorted(p for p in self.listing ^ _listing(self.d.base)
                       if not _MAY_CHANGE.fullmatch(p))
        assert moved == [], "the pull changed berthd's directories outside its snapshot roots"


# -- pulling and looking -----------------------------------------------------------------------


@dataclass
class Pulled:
    ok: bool
    line: str  # the error line of a failed pull ("" if it succeeded)
    shown: str


def berth_pull(d: Berthd, namespace: str, ref: str, snapshotter: str) -> Pulled:
    with tempfile.TemporaryDirectory(prefix="berth-docker-config-") as empty:
        proc = subprocess.run(
            [str(BERTH), "--address", d.address, "--namespace", namespace, "--snapshotter",
             snapshotter, "pull", "--plain-http", ref],
            capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
            env=loopback_env({"DOCKER_CONFIG": empty}))
    shown = f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, shown
    if proc.returncode == 0:
        return Pulled(True, "", shown)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("berth: "), shown
    return Pulled(False, lines[0], shown)


def ctr_pull(c: Ctr, ref: str, snapshotter: str) -> Pulled:
    proc = c("images", "pull", "--plain-http", "--snapshotter", snapshotter, ref, check=False)
    shown = f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    if proc.returncode == 0:
        return Pulled(True, "", shown)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ctr: "), shown
    return Pulled(False, lines[-1], shown)


def chain_ids(layers: list[bytes]) -> list[str]:
    """The snapshot names of the layers' chain, bottom first."""
    chain: list[str] = []
    for layer in layers:
        diff_id = sha256_of(layer)
        chain.append(sha256_of(f"{chain[-1]} {diff_id}".encode()) if chain else diff_id)
    return chain


@contextlib.contextmanager
def mounted(c: Ctr, layers: list[bytes], snapshotter: str, target: Path) -> Iterator[Path]:
    """The image's root file system on ``target`` for the block: the top of its chain in
    ``snapshotter``, through an active snapshot on it (``ctr images mount`` would not do:
    ctr 1.6 reads its --snapshotter as a global flag, which ctr does not have, and unpacks
    into overlayfs whatever is asked)."""
    with snapshot_viewed(c, chain_ids(layers)[-1], target, snapshotter) as root:
        yield root


@pytest.fixture(scope="module")
def baseline(module_berthd: Berthd, busybox_image: ImageInfo) -> str:
    """busybox, pulled before anything hostile into the namespace the tests use: it must
    survive them all. Returns the namespace."""
    ns = "cve-2021-32760"
    c = Ctr(module_berthd.address, ns)
    for snapshotter in SNAPSHOTTERS:
        c("images", "pull", "--plain-http", "--snapshotter", snapshotter, busybox_image.ref)
    return ns


def _pushed(registry: Registry, cache: dict[str, str], tag: str, layers: list[bytes]) -> str:
    if tag not in cache:
        cache[tag] = images.push_layers(registry, f"cve-2021-32760/{tag}:latest", layers)
    return cache[tag]


@pytest.fixture(scope="module")
def pushed() -> dict[str, str]:
    """Images pushed so far in this module, by tag: each case is pushed once."""
    return {}


def check_outcome(c: Ctr, pulled: Pulled, ref: str, layers: list[bytes],
                  snapshotter: str, refused: bool, before: dict[str, str], via: str) -> None:
    """The store after a pull: a refusal stored no image and no snapshot for the refused
    layer (nor any new active one); a success committed the whole chain."""
    chain = chain_ids(layers)
    kinds = _snapshots(c, snapshotter)
    if refused:
        assert not pulled.ok, f"the layer should have been refused:\n{pulled.shown}"
        # One clear line saying it was a layer that was refused.
        expected = "failed to extract layer" if via == "ctr" else "layer"
        assert expected in pulled.line, pulled.shown
        if via == "berth":
            # (ctr names the image before it unpacks, against containerd as against berthd.)
            assert ref not in image_names(c)
        assert chain[-1] not in kinds, f"a refused layer was committed: {kinds}"
        new = {k: v for k, v in kinds.items() if k not in before}
        assert all(k in chain[:-1] and v == "Committed" for k, v in new.items()), \
            f"the refused pull left snapshots behind: {new}"
    else:
        assert pulled.ok, f"the layer should have been contained:\n{pulled.shown}"
        assert ref in image_names(c)
        assert all(kinds.get(k) == "Committed" for k in chain), kinds


def _snapshots(c: Ctr, snapshotter: str) -> dict[str, str]:
    out = c("snapshots", "--snapshotter", snapshotter, "ls").stdout
    return {row.split()[0]: row.split()[-1] for row in out.splitlines()[1:] if row.strip()}


# -- the corpus, through berth pull ------------------------------------------------------------


@pytest.mark.parametrize("name", CORPUS)
def test_hostile_layer_pulled_by_berth(module_berthd: Berthd, registry: Registry,
                                       baseline: str, busybox_image: ImageInfo,
                                       sentinel: Path, pushed: dict[str, str], tmp_path: Path,
                                       name: str) -> None:
    d = module_berthd
    c = Ctr(d.address, baseline)
    layer = {n: data for n, data, _ in hostile_layers.hostile_layers(str(sentinel))}[name]
    ref = _pushed(registry, pushed, name, [layer])
    before = _snapshots(c, "overlayfs")
    untouched = Untouched(d, sentinel)
    try:
        pulled = berth_pull(d, baseline, ref, "overlayfs")
        untouched.check()
        check_outcome(c, pulled, ref, [layer], "overlayfs", name in REFUSED, before, "berth")
        if pulled.ok and name in POSTCONDITIONS:
            with mounted(c, [layer], "overlayfs", tmp_path / "mnt") as root:
                POSTCONDITIONS[name](root, sentinel)
            untouched.check()
        assert busybox_image.ref in image_names(c)
    finally:
        c("images", "rm", "--sync", ref, check=False)


# -- metadata through a symlink: the CVE itself, through both clients --------------------------


def _symlink_kept(path: str) -> Callable[[Path, Path], None]:
    """A hard link to a symlink is that symlink, linked: in the image it is a symlink still
    naming the sentinel (its target was not copied, linked or changed)."""
    def check(root: Path, outside: Path) -> None:
        assert (root / path).is_symlink(), f"{path} is not a symlink in the image"
        target = os.readlink(root / path)
        assert target.endswith((f"{outside.name}/secret", f"{outside.name}/dir")), target
    return check


def _replaced_by(path: str, kind: int, mode: int) -> Callable[[Path, Path], None]:
    """The entry replaced the lower layer's symlink (it did not go through it)."""
    def check(root: Path, outside: Path) -> None:
        st = (root / path).lstat()
        assert stat.S_IFMT(st.st_mode) == kind, stat.filemode(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode, oct(st.st_mode)
    return check


CONTAINED = {
    "file-over-lower-symlink": _replaced_by("f", stat.S_IFREG, 0o4777),
    "dir-over-lower-symlink": _replaced_by("d", stat.S_IFDIR, 0o777),
}


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("via", ["ctr", "berth"])
@pytest.mark.parametrize("name", METADATA)
def test_metadata_is_never_set_through_a_symlink(module_berthd: Berthd, registry: Registry,
                                                 baseline: str, busybox_image: ImageInfo,
                                                 sentinel: Path, pushed: dict[str, str],
                                                 tmp_path: Path, name: str, via: str,
                                                 snapshotter: str) -> None:
    d = module_berthd
    c = Ctr(d.address, baseline)
    case = {n: (layers, path) for n, layers, _, path in
            hostile_layers.metadata_through_symlink_cases(str(sentinel))}
    layers, path = case[name]
    ref = _pushed(registry, pushed, name, layers)
    secret = os.stat(sentinel / "secret")
    before = _snapshots(c, snapshotter)
    untouched = Untouched(d, sentinel)
    try:
        pulled = (ctr_pull(c, ref, snapshotter) if via == "ctr"
                  else berth_pull(d, baseline, ref, snapshotter))
        untouched.check()
        after = os.stat(sentinel / "secret")
        assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == \
            (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o640, 0, 0)
        # Either outcome is safe; whichever it is, the store must agree with it.
        check_outcome(c, pulled, ref, layers, snapshotter, not pulled.ok, before, via)
        if pulled.ok:
            with mounted(c, layers, snapshotter, tmp_path / "mnt") as root:
                CONTAINED.get(name, _symlink_kept(path))(root, sentinel)
            untouched.check()
        else:
            assert f"layer entry '{path}'" in pulled.line, pulled.shown  # names the entry
        assert busybox_image.ref in image_names(c)
    finally:
        c("images", "rm", "--sync", ref, check=False)
