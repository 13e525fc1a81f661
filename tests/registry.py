"""A real OCI distribution registry on loopback, for tests and benchmarks.

`Registry` starts Debian's `docker-registry serve CONFIG` bound to 127.0.0.1 on a free port, with
its storage in a temporary directory (or a directory the caller keeps), optionally behind htpasswd
basic auth, and stops exactly the process it started when the `with` block ends, even on failure.

Nothing here talks to a non-loopback address: the registry listens on 127.0.0.1 only, its storage
is the local filesystem, and the HTTP helpers and `loopback_env()` bypass any proxy configured in
the environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from processes import ManagedProcess, spawn, stop_process
from processes import loopback_env as loopback_env  # re-exported: conftest and images use it

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "/usr/bin/htpasswd"  # from Debian's apache2-utils


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(RuntimeError):
    """The registry could not be started (the message carries the tail of its log)."""


class Registry(ManagedProcess):
    """A `docker-registry` process serving plain HTTP on 127.0.0.1:PORT.

    Use as a context manager (or call `start()` / `stop()`):

        with Registry(auth=("berth", "secret")) as reg:
            reg.host      # "127.0.0.1:PORT"
            reg.root      # storage directory (Path)

    Guarantees: after `start()` returns, `GET /v2/` answers (200, or 401 with auth); `stop()`
    signals only the PID this object started and removes its temporary files. A `root` passed
    by the caller is kept (use it for a persistent store, e.g. a benchmark cache); otherwise the
    storage lives in a temporary directory removed on stop.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        auth: tuple[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self._given_root = Path(root) if root is not None else None
        self.auth = auth
        self.start_timeout = start_timeout
        self.port = 0
        self._workdir: Path | None = None
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry host as it appears in image references."""
        self._require_running()
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}"

    @property
    def root(self) -> Path:
        """The registry's storage directory (`storage.filesystem.rootdirectory`)."""
        if self._root is None:
            raise RuntimeError("registry not started")
        return self._root

    @property
    def pid(self) -> int:
        """PID of the registry process this object started."""
        self._require_running()
        assert self._proc is not None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """The registry's combined stdout/stderr."""
        if self._workdir is None:
            raise RuntimeError("registry not started")
        return self._workdir / "registry.log"

    def skopeo_dest_args(self) -> list[str]:
        """`skopeo copy` options for pushing here: plain HTTP, plus credentials if auth is on."""
        args = ["--dest-tls-verify=false"]
        if self.auth is not None:
            args += ["--dest-creds", f"{self.auth[0]}:{self.auth[1]}"]
        return args

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the registry and wait until `/v2/` answers; raise `RegistryError` if it won't."""
        if self._proc is not None:
            raise RuntimeError("registry already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="berth-registry-"))
        try:
            self._root = self._given_root or self._workdir / "storage"
            self._root.mkdir(parents=True, exist_ok=True)
            htpasswd = self._write_htpasswd() if self.auth is not None else None
            last_error: RegistryError | None = None
            for _attempt in range(5):  # a free port can be taken between probe and bind
                try:
                    self._start_once(htpasswd)
                    return
                except RegistryError as err:
                    last_error = err
                    if "address already in use" not in str(err):
                        break
            assert last_error is not None
            raise last_error
        except BaseException:
            self.stop()
            raise

    def _write_htpasswd(self) -> Path:
        assert self._workdir is not None and self.auth is not None
        if not Path(HTPASSWD_BINARY).exists():
            raise RegistryError(f"{HTPASSWD_BINARY} missing: apt-get install apache2-utils")
        path = self._workdir / "htpasswd"
        user, password = self.auth
        # -B bcrypt (the only scheme docker-registry accepts), -i reads the password on stdin.
        subprocess.run(
            [HTPASSWD_BINARY, "-B", "-c", "-i", str(path), user],
            input=password.encode(),
            check=True,
            capture_output=True,
        )
        return path

    def _write_config(self, htpasswd: Path | None) -> Path:
        assert self._workdir is not None and self._root is not None
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self._root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "berth-test", "path": str(htpasswd)}}
        path = self._workdir / "config.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        return path

    def _start_once(self, htpasswd: Path | None) -> None:
        self.port = free_loopback_port()
        config = self._write_config(htpasswd)
        self._proc = spawn([REGISTRY_BINARY, "serve", str(config)], self.log_path)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RegistryError(f"docker-registry exited early:\n{self.log_tail()}")
            try:
                status, _headers, _body = self.request("/v2/", credentials=None)
            except OSError:
                time.sleep(0.05)
                continue
            if status in (200, 401):
                return
            time.sleep(0.05)
        stop_process(self._proc)
        self._proc = None
        raise RegistryError(f"docker-registry did not answer /v2/ in time:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process we started (by PID) and remove our temporary files. Idempotent."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._given_root is None:
            self._root = None

    def _require_running(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("registry not running")

    # -- HTTP helpers for tests -------------------------------------------------------------

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        credentials: tuple[str, str] | bool | None = True,
        timeout: float = 30.0,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to this registry, never through a proxy, with `data` as its body.

        `credentials`: True sends the registry's own credentials (if it has auth), None or False
        sends none, a (user, password) pair sends those. Returns (status, headers, body) for
        every status, including 4xx/5xx.
        """
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method, headers=dict(headers or {}),
            data=data,
        )
        pair = self.auth if credentials is True else credentials or None
        if pair:
            token = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers.items()), err.read()

    def get_manifest(self, repo: str, reference: str) -> tuple[str, dict[str, object]]:
        """GET a manifest (OCI or Docker v2, image or index): returns (media type, parsed JSON)."""
        accept = ", ".join(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
        )
        status, headers, body = self.request(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept}
        )
        if status != 200:
            raise AssertionError(f"GET manifest {repo}:{reference}: HTTP {status}: {body[:500]!r}")
        media_type = headers.get("Content-Type", "")
        return media_type, json.loads(body)

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` as a blob of `repo` (one monolithic upload); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, body = self.request(f"/v2/{repo}/blobs/uploads/", method="POST")
        if status != 202:
            raise AssertionError(f"start upload to {repo}: HTTP {status}: {body[:500]!r}")
        location = headers["Location"]
        location = location.split(f"127.0.0.1:{self.port}", 1)[-1]
        separator = "&" if "?" in location else "?"
        status, _, body = self.request(
            f"{location}{separator}digest={digest}", method="PUT", data=data,
            headers={"Content-Type": "application/octet-stream"})
        if status != 201:
            raise AssertionError(f"upload {digest} to {repo}: HTTP {status}: {body[:500]!r}")
        return digest

    def put_manifest(self, repo: str, reference: str, document: bytes, media_type: str) -> str:
        """PUT `document` (a manifest or index, bytes as they are) as `repo:reference`;
        returns its digest."""
        status, _, body = self.request(f"/v2/{repo}/manifests/{reference}", method="PUT",
                                       data=document, headers={"Content-Type": media_type})
        if status != 201:
            raise AssertionError(f"PUT manifest {repo}:{reference}: HTTP {status}: {body[:500]!r}")
        return "sha256:" + hashlib.sha256(document).hexdigest()

    def get_blob(self, repo: str, digest: str) -> bytes:
        """GET a blob's bytes (the registry may answer with a redirect, which is followed)."""
        status, _headers, body = self.request(f"/v2/{repo}/blobs/{digest}")
        if status != 200:
            raise AssertionError(f"GET blob {repo}@{digest}: HTTP {status}: {body[:500]!r}")
        return body
