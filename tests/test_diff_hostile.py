"""Hostile layers: applied in both modes, nothing outside the root may change.

Each layer from ``hostile_layers`` is applied onto a fresh root in a sandbox that also holds a
sentinel ``outside`` directory (and, in overlay mode, the lower layer). Afterwards the whole
sandbox except the root must be exactly as before (modes, owners, times, link counts, content,
xattrs), no inode in the root may be one from outside it, and the outcome must be the one
decided for that layer: contained (applied inside the root) or refused (InvalidArgument).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import hostile_layers
import pytest

from berth import errdefs
from berth.diff.archive import apply_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (devices, chown)")

REFUSED = {
    "dotdot-file", "dotdot-nested", "dotdot-deep-overwrite",
    "symlink-dir-hardlink", "hardlink-dotdot", "hardlink-absolute", "hardlink-etc-passwd",
    "hardlink-to-dir", "hardlink-to-root", "whiteout-dotdot", "whiteout-nested-dotdot",
    "whiteout-empty-name", "whiteout-dotdot-name", "symlink-loop", "symlink-self-loop",
    "long-component", "long-path", "nul-in-pax-path", "pax-path-dotdot", "pax-linkpath-dotdot",
    "gnu-longname-dotdot", "gnu-longlink-dotdot", "huge-pax-header", "sparse-member",
    "bad-checksum", "truncated", "deep-nesting", "capability-on-symlink",
}
CASE_NAMES = [name for name, _, _ in hostile_layers.hostile_layers("/sandbox/outside")]


def _in(root: Path, outside: Path, rel: str = "") -> Path:
    """Where something aimed at ``outside/rel`` by absolute path lands inside ``root``."""
    return root / str(outside).lstrip("/") / rel


def _expect_contents(path: Callable[[Path, Path], Path], data: bytes) -> Callable[[Path, Path],
                                                                                   None]:
    def check(root: Path, outside: Path) -> None:
        target = path(root, outside)
        assert stat.S_ISREG(target.lstat().st_mode)
        assert target.read_bytes() == data
    return check


def _symlink_at(rel: str) -> Callable[[Path, Path], None]:
    def check(root: Path, outside: Path) -> None:
        assert (root / rel).is_symlink()
    return check


def _no_trusted_xattrs(root: Path, outside: Path) -> None:
    assert not [k for k in os.listxattr(root / "d") if k.startswith("trusted.")]


def _hardlink_kept_original(root: Path, outside: Path) -> None:
    assert (root / "f").read_bytes() == b"original"
    assert (root / "h").read_bytes() == b"replaced"
    assert (root / "f").stat().st_ino != (root / "h").stat().st_ino


def _dir_replaced(root: Path, outside: Path) -> None:
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert (root / "d" / "f").read_bytes() == b"x"


def _odd_name(root: Path, outside: Path) -> None:
    assert (root / "odd\\name\nwith\tcontrol\x7f\u00e9\udcff").read_bytes() == b"x"


POSTCONDITIONS: dict[str, Callable[[Path, Path], None]] = {
    "absolute-name": _expect_contents(lambda r, o: _in(r, o, "pwned"), b"x"),
    "abs-symlink-write": _expect_contents(lambda r, o: _in(r, o, "secret"), b"pwned"),
    "rel-symlink-write": _expect_contents(lambda r, o: r / "outside" / "secret", b"pwned"),
    "rel-symlink-deep-write": _expect_contents(lambda r, o: _in(r, o, "secret"), b"pwned"),
    "symlink-chain": _expect_contents(lambda r, o: r / "outside" / "secret", b"pwned"),
    "symlink-to-root-then-dotdot": _expect_contents(lambda r, o: r / "outside" / "pwned", b"x"),
    "symlink-abs-with-dotdots": _expect_contents(lambda r, o: _in(r, o, "pwned"), b"x"),
    "hardlink-to-outside-symlink": _symlink_at("h"),
    "hardlink-then-chmod": _symlink_at("h"),
    "hardlink-then-overwrite": _hardlink_kept_original,
    "dir-replaces-symlink": _dir_replaced,
    "file-symlink-file": _expect_contents(lambda r, o: r / "f", b"pwned"),
    "file-mode-on-symlink-name": _expect_contents(lambda r, o: r / "s", b""),
    "xattr-on-symlink": _symlink_at("s"),
    "trusted-overlay-xattr": _no_trusted_xattrs,
    "setuid-through-symlink": _expect_contents(lambda r, o: _in(r, o, "suid"), b"#!"),
    "dir-swapped-for-symlink": _expect_contents(lambda r, o: _in(r, o, "b"), b"pwned"),
    "odd-bytes-name": _odd_name,
    "absolute-symlink-to-sentinel-file": _symlink_at("passwd"),
}


def _make_sandbox(tmp_path: Path, overlay: bool) -> tuple[Path, Path, list[str]]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"sentinel")
    os.chmod(outside / "secret", 0o640)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_bytes(b"inner")
    os.symlink("secret", outside / "link")
    os.setxattr(outside / "secret", "user.sentinel", b"1")
    parents: list[str] = []
    if overlay:
        lower = tmp_path / "lower"
        (lower / "etc").mkdir(parents=True)
        (lower / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
        (lower / "outside").mkdir()
        parents.append(str(lower))
        root = tmp_path / "upper"
    else:
        root = tmp_path / "root"
    root.mkdir()
    return root, outside, parents


def _inodes(top: Path) -> set[tuple[int, int]]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISDIR(st.st_mode):
                found.add((st.st_dev, st.st_ino))
    return found


def test_corpus_is_big_enough() -> None:
    cases = hostile_layers.hostile_layers("/sandbox/outside")
    assert len(cases) >= 30
    assert all(isinstance(data, bytes) and description for _, data, description in cases)
    assert set(CASE_NAMES) >= REFUSED
    assert set(POSTCONDITIONS) <= set(CASE_NAMES) - REFUSED


@pytest.mark.parametrize("overlay", [False, True], ids=["plain", "overlay"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_layer_is_contained(tmp_path: Path, name: str, overlay: bool) -> None:
    root, outside, parents = _make_sandbox(tmp_path, overlay)
    layer = {n: data for n, data, _ in hostile_layers.hostile_layers(str(outside))}[name]
    before = hostile_layers.snapshot_tree(str(tmp_path), exclude=[str(root)])
    root_mode = root.stat().st_mode
    passwd = os.stat("/etc/passwd")
    outside_inodes = _inodes(tmp_path / "outside") | {(passwd.st_dev, passwd.st_ino)}

    error: errdefs.InvalidArgument | None = None
    try:
        apply_tar(io.BytesIO(layer), str(root), overlay_whiteouts=overlay, parents=parents)
    except errdefs.InvalidArgument as exc:
        error = exc

    after = hostile_layers.snapshot_tree(str(tmp_path), exclude=[str(root)])
    assert after == before, "something outside the root changed"
    assert os.stat("/etc/passwd") == passwd
    assert not (_inodes(root) & outside_inodes), "an outside inode was linked into the root"
    assert root.stat().st_mode == root_mode
    if name in REFUSED:
        assert error is not None, "the layer should have been refused"
        assert "layer" in str(error)
    else:
        assert error is None, f"the layer should have been contained, got: {error}"
        check = POSTCONDITIONS.get(name)
        if check is not None:
            check(root, outside)


def test_refusal_names_the_entry(tmp_path: Path) -> None:
    root, _, _ = _make_sandbox(tmp_path, overlay=False)
    layer = hostile_layers.LayerBuilder().file("a/../../etc/passwd", b"x").build()
    with pytest.raises(errdefs.InvalidArgument, match=r"'a/\.\./\.\./etc/passwd' escapes the root"):
        apply_tar(io.BytesIO(layer), str(root), overlay_whiteouts=False)
