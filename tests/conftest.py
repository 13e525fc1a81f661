"""Shared fixtures for Berth's tests.

* `registry`: a real `docker-registry` on 127.0.0.1 (session scope, no auth).
* `busybox_image`, `multilayer_image`: real OCI images pushed to it once per session
  (`images.ImageInfo`: the reference plus what a correct unpack must produce).
* `ctr`: the `Ctr` class, a wrapper around the real `/usr/bin/ctr`: `ctr(address)("images", "ls")`.
* `reference_containerd`: a private real containerd (module scope), the yardstick.
* marker `needs_root`: the test is skipped unless it runs as root.

Helper modules (`registry`, `images`, `reference_containerd`, later `daemon`) sit next to this
file and are imported as top-level modules (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import images
import pytest
from daemon import Berthd
from images import ImageInfo
from reference_containerd import ReferenceContainerd
from registry import Registry, loopback_env

CTR_BINARY = "/usr/bin/ctr"


# -- root --------------------------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    """Skip the calling test (or fixture) unless we are root."""
    if not is_root():
        pytest.skip("needs root")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_root: the test needs root; skipped otherwise")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_root") is not None and not is_root():
        pytest.skip("needs root")


# -- what a session must leave behind: no dead shim sockets -------------------------------------

SHIM_SOCKETS = Path("/run/berth/s")


def _dead_shim_sockets(since: float) -> list[str]:
    """Sockets under /run/berth/s made since ``since`` that nothing serves any more."""
    import socket

    dead = []
    for path in sorted(SHIM_SOCKETS.glob("*")) if SHIM_SOCKETS.is_dir() else ():
        try:
            if path.stat().st_mtime < since:
                continue
        except FileNotFoundError:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except (FileNotFoundError, TimeoutError):
                continue  # gone, or alive but too busy to accept
            except OSError:
                dead.append(str(path))
    return dead


@pytest.fixture(scope="session", autouse=True)
def no_dead_shim_sockets() -> Iterator[None]:
    """Fails the session if its tests left a shim socket that nothing serves (a shim that
    died without cleanup, or a cleanup that forgot it)."""
    import time

    started = time.time() - 1
    yield
    dead = _dead_shim_sockets(started)
    if dead:
        time.sleep(2)  # a shim leaving, or berthd cleaning up after one, at this moment
        dead = _dead_shim_sockets(started)
    assert not dead, f"dead shim sockets left behind: {dead}"


# -- the real ctr client -----------------------------------------------------------------------


class Ctr:
    """Runs the real `ctr` against one daemon socket: `Ctr(address)("images", "pull", ref)`.

    Every call is `ctr --address ADDRESS --namespace NS ARGS...` with a proxy-free environment.
    It returns the `subprocess.CompletedProcess` (text by default). With `check=True` (the
    default) a non-zero exit, or a timeout, raises AssertionError showing the command, the exit
    code, stdout and stderr.
    """

    def __init__(
        self,
        address: str | os.PathLike[str],
        namespace: str = "default",
        *,
        binary: str = CTR_BINARY,
        timeout: float = 120.0,
    ) -> None:
        self.address = str(address)
        self.namespace = namespace
        self.binary = binary
        self.timeout = timeout

    def command(self, *args: str, namespace: str | None = None) -> list[str]:
        """The argv a call with these arguments runs."""
        return [
            self.binary,
            "--address", self.address,
            "--namespace", namespace or self.namespace,
            *args,
        ]  # fmt: skip

    def __call__(
        self,
        *args: str,
        check: bool = True,
        namespace: str | None = None,
        input: str | bytes | None = None,
        timeout: float | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        cmd = self.command(*args, namespace=namespace)
        try:
            proc = subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                text=text,
                timeout=timeout or self.timeout,
                env=loopback_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"timed out after {err.timeout} s: {shlex.join(cmd)}\n"
                f"--- stdout ---\n{err.stdout!r}\n--- stderr ---\n{err.stderr!r}"
            ) from None
        if check and proc.returncode != 0:
            raise AssertionError(
                f"command failed with exit code {proc.returncode}: {shlex.join(cmd)}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    def in_namespace(self, namespace: str) -> Ctr:
        """The same client, bound to another namespace."""
        return Ctr(self.address, namespace, binary=self.binary, timeout=self.timeout)


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def protect(c: Ctr, digest: str) -> str:
    """Make `digest` (present or still to come) safe from garbage collection: a small blob
    labelled as a GC root that references it. (`ctr content ingest` takes no lease, so a blob
    it commits is garbage to containerd's collector as to berthd's.) The anchor itself can be
    collected between its commit and its labelling: then try again. Returns the anchor's
    digest (remove it to let `digest` go)."""
    for attempt in range(10):
        anchor = f"robustness anchor for {digest}, attempt {attempt}".encode()
        c("content", "ingest", "--expected-size", str(len(anchor)), "--expected-digest",
          sha256_of(anchor), f"anchor-{uuid.uuid4().hex}", input=anchor, text=False)
        labelled = c("content", "label", sha256_of(anchor), "containerd.io/gc.root=robustness",
                     f"containerd.io/gc.ref.content.protected={digest}", check=False)
        if labelled.returncode == 0:
            return sha256_of(anchor)
    raise AssertionError("could not anchor a GC root")


@pytest.fixture(scope="session")
def ctr() -> type[Ctr]:
    """The `Ctr` class: build a client for a daemon socket with `ctr(address, namespace)`."""
    return Ctr


# -- registry and images -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A started loopback registry without auth, shared by the session; stopped at the end."""
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's built OCI layouts are cached (each image is built once)."""
    return tmp_path_factory.mktemp("oci-layouts")


@pytest.fixture(scope="session")
def busybox_image(registry: Registry, image_cache: Path) -> ImageInfo:
    """`127.0.0.1:PORT/library/busybox:latest`: one layer, static busybox, cmd /bin/sh."""
    require_root()
    return images.busybox(registry, image_cache)


@pytest.fixture(scope="session")
def multilayer_image(registry: Registry, image_cache: Path) -> ImageInfo:
    """`127.0.0.1:PORT/library/multilayer:latest`: 3 layers with hardlink, symlink, whiteouts."""
    require_root()
    return images.multilayer(registry, image_cache)


@pytest.fixture(scope="session")
def pause_image(registry: Registry, image_cache: Path) -> str:
    """`127.0.0.1:PORT/library/pause:3.6`: a pod sandbox image made from catatonit."""
    require_root()
    return images.pause(registry, image_cache)


# -- the reference daemon ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_containerd() -> Iterator[ReferenceContainerd]:
    """A private real containerd for this module, with its own root, state and socket."""
    require_root()
    with ReferenceContainerd() as daemon:
        yield daemon


# -- berthd ------------------------------------------------------------------------------------


@pytest.fixture
def berthd(tmp_path: Path) -> Iterator[Berthd]:
    """A berthd of this test's own (root, state, socket under tmp_path), stopped afterwards."""
    require_root()
    with Berthd(tmp_path / "berthd") as daemon:
        yield daemon


@contextlib.contextmanager
def berth_env(tmp_path_factory: pytest.TempPathFactory, name: str, refs: Sequence[str]
              ) -> Iterator[Any]:
    """A berthd (Berth's own shim) with ``refs`` pulled, and the `berth` CLI bound to it
    (``test_cli_run.Env``, its default image the first of ``refs``); every container removed
    at the end."""
    from test_cli_run import Env

    base = tmp_path_factory.mktemp(name)
    with Berthd(base / "berthd") as daemon:
        e = Env(daemon, refs[0], base / "logs", "berth")
        try:
            for ref in refs:
                e("pull", "--plain-http", "-q", ref)
            yield e
        finally:
            e.remove_all()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_image: ImageInfo) -> Iterator[Any]:
    """:func:`berth_env` with the busybox image, one per test module (modules that need
    another set-up define their own ``env``)."""
    with berth_env(tmp_path_factory, "berth-env", [busybox_image.ref]) as e:
        yield e


@pytest.fixture(scope="module")
def module_berthd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Berthd]:
    """One berthd shared by a test module."""
    require_root()
    with Berthd(tmp_path_factory.mktemp("berthd")) as daemon:
        yield daemon
