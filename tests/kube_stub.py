"""A harness that lets real Go clients (``kubectl``) drive CRI streaming (exec, attach,
port-forward) against any CRI runtime, the way a kubelet relays them.

* :func:`kubectl_binaries`: the kubectls to test with: Debian's ``kubernetes-client`` 1.20
  (SPDY only; downloaded once with ``apt-get download`` and unpacked with ``dpkg-deb -x`` under
  the repository's git-ignored ``.cache/``, never installed) and ``/usr/bin/kubectl`` when there
  is one (1.32 here; it offers WebSocket first and falls back to SPDY).
* :class:`KubeStub`: a stub Kubernetes API server on 127.0.0.1 (a thread) that serves what
  kubectl needs (discovery, ``/version``, the pod objects the test declares) and answers
  ``.../pods/NAME/exec|attach|portforward`` by calling the runtime's CRI Exec / Attach /
  PortForward (any :class:`cri_fixtures.CRI`) and either proxying the upgrade to the returned
  URL (``mode="proxy"``, the default: the kube-apiserver's own way) or answering
  ``302 Found`` with ``Location: URL`` (``mode="redirect"``: client-go's SPDY dialer follows it,
  as a GET, in 1.20 and 1.32 alike; 1.32's WebSocket attempt does not, and falls back to SPDY
  as on any other non-101 answer). It writes a kubeconfig and a private ``HOME`` (kubectl's
  discovery cache lives in ``$HOME/.kube/cache``), and records every request and, when
  proxying, the runtime's answer to each upgrade (:attr:`KubeStub.streams`).
* :func:`run_kubectl` (a plain run), :class:`KubectlProcess` (in the background, e.g.
  ``port-forward``, output read as it comes) and :class:`KubectlTerminal` (under a pty with a
  window size, for ``exec -it`` / ``attach -it``).

Everything started here is stopped by its own object (threads joined, children killed by PID).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from cri_fixtures import CRI
from processes import loopback_env

from berth.api.cri.runtime.v1 import api_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "kubectl"
DEBIAN_PACKAGE = "kubernetes-client"
SYSTEM_KUBECTL = Path("/usr/bin/kubectl")
SERVER_VERSION = "v1.32.0"
SETSID = "/usr/bin/setsid"  # util-linux

# No preexec_fn anywhere here: in a process holding gRPC channels, running Python in the
# forked child (as preexec_fn does) can abort it before exec (grpc's fork handlers; seen as
# kubectl "exiting" with -6 and an "Epoll1Poller ... Bad file descriptor" line on its stderr).

# -- the kubectl binaries ---------------------------------------------------------------------


def _client_version(binary: Path) -> str:
    """``major.minor`` of a kubectl binary (from ``kubectl version --client -o json``)."""
    done = subprocess.run([str(binary), "version", "--client", "-o", "json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=loopback_env({"KUBECONFIG": "/dev/null"}))
    info = json.loads(done.stdout)["clientVersion"]
    return f"{info['major']}.{info['minor'].rstrip('+')}"


def _debian_kubectl(cache_dir: Path) -> Path | None:
    """Debian's kubectl, unpacked in ``cache_dir`` (downloaded on the first call only)."""
    for cached in sorted(cache_dir.glob(f"{DEBIAN_PACKAGE}_*/**/bin/kubectl")):
        if os.access(cached, os.X_OK):
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", DEBIAN_PACKAGE]
        got = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300,
                             check=False)
        if got.returncode != 0:  # a machine whose package lists were never fetched
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600,
                           check=False)
            got = subprocess.run(argv, cwd=work, capture_output=True, text=True,
                                 timeout=300, check=False)
        debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if got.returncode != 0 or not debs:
            return None
        deb = debs[0]
        # Where the binary sits in the package (./usr/bin/kubectl in Debian 12's).
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                                 check=True).stdout
        inside = next(line.split()[-1] for line in listing.splitlines()
                      if line.split() and line.split()[-1].endswith("/bin/kubectl"))
        unpacked = work / deb.stem
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True,
                       capture_output=True)
        binary = unpacked / inside
        if not os.access(binary, os.X_OK):
            return None
        final = cache_dir / deb.stem
        try:
            os.rename(unpacked, final)  # atomic: a concurrent session may have won the race
        except OSError:
            shutil.rmtree(unpacked, ignore_errors=True)
        return final / inside


def kubectl_binaries(cache_dir: Path = CACHE_DIR) -> dict[str, Path]:
    """``{"1.20": Debian's kubectl, "1.32": /usr/bin/kubectl}``: each kubectl this machine can
    run, by client ``major.minor`` (either may be missing). Debian's is fetched once and kept
    in ``cache_dir`` (the repository's git-ignored ``.cache/kubectl`` by default).

    ``/usr/bin/kubectl`` here is Google Cloud SDK's *dispatcher* (client v1.32.4): it first
    GETs the server's ``/version`` and, for a server minor it has a binary of (1.27 to 1.31,
    1.33), runs ``kubectl.1.<minor>`` beside it instead; for 1.32 (:data:`SERVER_VERSION`)
    and for minors it has none of, it runs its own 1.32.4. So the kubectl that really runs
    follows the stub's ``version``."""
    found: dict[str, Path] = {}
    debian = _debian_kubectl(cache_dir)
    if debian is not None:
        found[_client_version(debian)] = debian
    if SYSTEM_KUBECTL.exists():
        with contextlib.suppress(Exception):
            found.setdefault(_client_version(SYSTEM_KUBECTL), SYSTEM_KUBECTL)
    return found


# -- running kubectl --------------------------------------------------------------------------


def kubectl_env(kubeconfig: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """kubectl's environment: no proxies, ``KUBECONFIG``, and ``HOME`` the kubeconfig's
    directory (so its discovery cache, ``$HOME/.kube/cache``, is private)."""
    env = loopback_env({"KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)})
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("KUBERNETES_SERVICE_PORT", None)
    if extra:
        env.update(extra)
    return env


def run_kubectl(binary: Path, kubeconfig: Path, *args: str, input: bytes | None = None,
                timeout: float = 60, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[bytes]:
    """``kubectl ARGS`` to its end, stdin ``input`` (or none), output captured as bytes.
    A run past ``timeout`` kills kubectl and raises AssertionError with what it printed."""
    argv = [str(binary), *args]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None
                            else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kubectl_env(kubeconfig, env))
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"kubectl timed out after {timeout} s: {argv}\n"
                             f"--- stdout ---\n{out!r}\n--- stderr ---\n{err!r}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class _Output:
    """Bytes read from a child as they come (by a reader thread or a select loop), and waits
    on them with a timeout."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.cond = threading.Condition()

    def add(self, chunk: bytes) -> None:
        with self.cond:
            if chunk:
                self.data += chunk
            else:
                self.eof = True
            self.cond.notify_all()

    def wait_for(self, pattern: bytes | re.Pattern[bytes], timeout: float,
                 start: int = 0) -> re.Match[bytes]:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = regex.search(bytes(self.data), start)
                if found:
                    return found
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "EOF" if self.eof else f"{timeout} s"
                    raise AssertionError(f"{regex.pattern!r} not seen ({why}); "
                                         f"output: {bytes(self.data)!r}")
                self.cond.wait(left)


class KubectlProcess:
    """``kubectl ARGS`` in the background (e.g. ``port-forward``), stdout and stderr read as
    they come: ``with KubectlProcess(bin, cfg, "port-forward", "web", ":8080") as k:
    k.stdout.wait_for(...)``. Leaving the block kills it (by PID) if it still runs."""

    def __init__(self, binary: Path, kubeconfig: Path, *args: str,
                 env: dict[str, str] | None = None, stdin: bool = False) -> None:
        self.argv = [str(binary), *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if stdin
                                     else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=kubectl_env(kubeconfig, env))
        self.stdout, self.stderr = _Output(), _Output()
        self._threads = [threading.Thread(target=self._pump, args=(pipe, out), daemon=True)
                         for pipe, out in ((self.proc.stdout, self.stdout),
                                           (self.proc.stderr, self.stderr))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(pipe: Any, out: _Output) -> None:
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            out.add(chunk)
            if not chunk:
                return

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._threads:
            t.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class KubectlTerminal:
    """``kubectl ARGS`` on a pseudo-terminal of ``rows`` by ``cols`` (its stdin, stdout and
    stderr, and its controlling terminal, so ``exec -it`` gets a real one):
    ``with KubectlTerminal(bin, cfg, "exec", "-it", "web", "--", "sh") as t:
    t.wait_for(b"# "); t.write(b"exit\\n"); t.wait()``. :meth:`resize` changes the window
    size (the kernel sends kubectl SIGWINCH). Leaving the block kills kubectl by PID."""

    def __init__(self, binary: Path, kubeconfig: Path, *args: str, rows: int = 24,
                 cols: int = 80, env: dict[str, str] | None = None) -> None:
        self.argv = [str(binary), *args]
        self.master, slave = os.openpty()
        _set_winsize(slave, rows, cols)
        try:
            # setsid -c: a new session whose controlling terminal is the pty (stdin), so the
            # kernel sends kubectl SIGWINCH on a resize; setsid execs kubectl (same PID).
            self.proc = subprocess.Popen([SETSID, "--ctty", *self.argv], stdin=slave,
                                         stdout=slave, stderr=slave,
                                         env=kubectl_env(kubeconfig, {"TERM": "xterm",
                                                                      **(env or {})}))
        finally:
            os.close(slave)
        self.output = _Output()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if not ready:
                    continue
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the slave side has closed it
                chunk = b""
            self.output.add(chunk)
            if not chunk:
                return

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, pattern: bytes | re.Pattern[bytes], timeout: float = 30,
                 start: int = 0) -> re.Match[bytes]:
        return self.output.wait_for(pattern, timeout, start)

    def resize(self, rows: int, cols: int) -> None:
        _set_winsize(self.master, rows, cols)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        with contextlib.suppress(OSError):
            os.close(self.master)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the stub API server ----------------------------------------------------------------------


@dataclass
class Container:
    """A container of a stub pod: ``id`` is the runtime's (CRI) container id; ``stdin`` and
    ``tty`` as the pod spec shows them (``kubectl attach -t`` needs ``tty``)."""

    name: str
    id: str = ""
    stdin: bool = False
    tty: bool = False
    image: str = "busybox"


@dataclass
class Pod:
    """A pod the stub serves, backed by a runtime: ``sandbox_id`` for port-forward (found from
    the first container when not given), ``containers`` for exec and attach (the first is the
    default)."""

    cri: CRI
    containers: list[Container] = field(default_factory=list)
    sandbox_id: str = ""
    namespace: str = "default"
    phase: str = "Running"


@dataclass
class StreamRecord:
    """One streaming request kubectl made, and what happened to it."""

    method: str
    kind: str  # exec | attach | portforward
    pod: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]  # as kubectl sent them, in order
    runtime_url: str = ""
    answer: str = ""  # the runtime's status line (proxy) or "302 Found" (redirect)
    answer_headers: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    started: float = 0.0
    ended: float = 0.0

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def answer_values(self, name: str) -> list[str]:
        return [v for k, v in self.answer_headers if k.lower() == name.lower()]


def _resources() -> list[dict[str, Any]]:
    def res(name: str, kind: str, verbs: list[str], **extra: Any) -> dict[str, Any]:
        return {"name": name, "singularName": "", "namespaced": True, "kind": kind,
                "verbs": verbs, **extra}

    return [
        res("pods", "Pod", ["get", "list"], shortNames=["po"], categories=["all"]),
        res("pods/attach", "PodAttachOptions", ["create", "get"]),
        res("pods/exec", "PodExecOptions", ["create", "get"]),
        res("pods/portforward", "PodPortForwardOptions", ["create", "get"]),
    ]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)(?:/([a-z]+))?$")
_TRUE = ("true", "1", "True")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.stub.track(self.connection)  # so stop() can end a waiting keep-alive

    def finish(self) -> None:
        self.server.stub.untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # -- plain API --------------------------------------------------------------------------

    def _json(self, code: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        stub = self.server.stub
        url = urllib.parse.urlsplit(self.path)
        stub.log.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if url.path == "/version":
            return self._json(200, stub.version_info())
        if url.path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [
                                        {"clientCIDR": "0.0.0.0/0",
                                         "serverAddress": f"127.0.0.1:{stub.port}"}]})
        if url.path == "/apis":
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if url.path == "/api/v1":
            return self._json(200, {"kind": "APIResourceList", "groupVersion": "v1",
                                    "resources": _resources()})
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", url.path):
            items = [stub.pod_object(n) for n, p in stub.pods.items()
                     if p.namespace == m.group(1)]
            return self._json(200, {"kind": "PodList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": items})
        m = _POD_PATH.match(url.path)
        if not m:
            return self._json(404, _status(404, "NotFound", "the server could not find the "
                                           "requested resource"))
        namespace, name, sub = m.groups()
        pod = stub.pods.get(name)
        if pod is None or pod.namespace != namespace:
            return self._json(404, _status(404, "NotFound", f'pods "{name}" not found'))
        if sub is None and self.command == "GET":
            return self._json(200, stub.pod_object(name))
        if sub in ("exec", "attach", "portforward"):
            return self._stream(sub, name, pod, urllib.parse.parse_qs(url.query,
                                                                      keep_blank_values=True))
        return self._json(405, _status(405, "MethodNotAllowed", f"{self.command} {url.path}"))

    # -- streaming --------------------------------------------------------------------------

    def _stream(self, kind: str, name: str, pod: Pod, query: dict[str, list[str]]) -> None:
        stub = self.server.stub
        record = StreamRecord(self.command, kind, name, query, list(self.headers.items()),
                              started=time.monotonic())
        stub.streams.append(record)
        if stub.websocket == "refuse" and self.headers.get("Upgrade", "").lower() == "websocket":
            record.answer = "400 Bad Request"
            record.ended = time.monotonic()
            return self._json(400, _status(400, "BadRequest", "WebSocket refused by the stub"))
        try:
            url = self._runtime_url(kind, pod, query)
        except LookupError as err:
            record.error = str(err)
            return self._json(400, _status(400, "BadRequest", str(err)))
        except grpc.RpcError as err:
            record.error = f"{err.code().name}: {err.details()}"
            return self._json(500, _status(500, "InternalError",
                                           f"{kind} on the runtime failed: {err.details()}"))
        record.runtime_url = url
        if stub.mode == "redirect":
            record.answer = "302 Found"
            self.send_response(302)
            self.send_header("Location", url)
            self.send_header("Content-Length", "0")
            self.end_headers()
            record.ended = time.monotonic()
            return
        try:
            self._proxy(url, record)
        finally:
            record.ended = time.monotonic()
            self.close_connection = True

    def _runtime_url(self, kind: str, pod: Pod, query: dict[str, list[str]]) -> str:
        def flag(key: str) -> bool:
            return query.get(key, [""])[-1] in _TRUE

        if kind == "portforward":
            ports = [int(p) for value in query.get("ports", []) for p in value.split(",") if p]
            return str(pod.cri.runtime.PortForward(pb.PortForwardRequest(
                pod_sandbox_id=self.server.stub.sandbox_of(pod), port=ports), timeout=30).url)
        wanted = query.get("container", [""])[-1]
        container = next((c for c in pod.containers if c.name == wanted or not wanted), None)
        if container is None or not container.id:
            raise LookupError(f"container {wanted} is not valid for pod")
        if kind == "exec":
            return str(pod.cri.runtime.Exec(pb.ExecRequest(
                container_id=container.id, cmd=query.get("command", []), tty=flag("tty"),
                stdin=flag("stdin"), stdout=flag("stdout"), stderr=flag("stderr")),
                timeout=30).url)
        return str(pod.cri.runtime.Attach(pb.AttachRequest(
            container_id=container.id, tty=flag("tty"), stdin=flag("stdin"),
            stdout=flag("stdout"), stderr=flag("stderr")), timeout=30).url)

    def _proxy(self, url: str, record: StreamRecord) -> None:
        """Send kubectl's request on to the runtime's URL as it came (the same method, its
        headers, the Host rewritten), hand the runtime's answer back byte for byte, then, once
        upgraded, splice the two connections until both sides have closed."""
        target = urllib.parse.urlsplit(url)
        path = target.path + (f"?{target.query}" if target.query else "")
        head = [f"{self.command} {path} HTTP/1.1", f"Host: {target.netloc}"]
        head += [f"{k}: {v}" for k, v in self.headers.items()
                 if k.lower() not in ("host", "content-length")]
        try:
            upstream = socket.create_connection((target.hostname, target.port or 80),
                                                timeout=30)
        except OSError as err:
            record.error = f"dialing {url}: {err}"
            return self._json(502, _status(502, "BadGateway", record.error))
        for sock in (upstream, self.connection):  # SPDY frames are small: no Nagle delays
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.stub.track(upstream)
        try:
            upstream.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            answer = bytearray()
            while b"\r\n\r\n" not in answer:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                answer += chunk
            header_block, _, rest = bytes(answer).partition(b"\r\n\r\n")
            lines = header_block.decode("latin-1").split("\r\n")
            record.answer = lines[0].split(" ", 1)[-1]
            record.answer_headers = [(k.strip(), v.strip()) for k, _, v in
                                     (line.partition(":") for line in lines[1:])]
            if not record.answer.startswith("101"):
                length = next((int(v) for k, v in record.answer_headers
                               if k.lower() == "content-length"), None)
                body = bytearray(rest)
                while length is None or len(body) < length:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.wfile.write(bytes(answer[:len(header_block) + 4]) + bytes(body))
                self.wfile.flush()
                return
            upstream.settimeout(None)
            self.connection.settimeout(None)
            self.wfile.write(bytes(answer))
            self.wfile.flush()
            self._splice(upstream)
        finally:
            self.server.stub.untrack(upstream)
            upstream.close()

    def _splice(self, upstream: socket.socket) -> None:
        def down() -> None:
            with contextlib.suppress(OSError):
                while chunk := upstream.recv(65536):
                    self.connection.sendall(chunk)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=down, daemon=True)
        other.start()
        with contextlib.suppress(OSError, ValueError):
            # read1: bytes kubectl sent behind its request head are in rfile's buffer already
            while chunk := self.rfile.read1(65536):
                upstream.sendall(chunk)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        other.join()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread
    request_queue_size = 128
    stub: KubeStub


class KubeStub:
    """A stub Kubernetes API server for kubectl, on 127.0.0.1 (a random port), in a thread:

        with KubeStub() as kube:
            kube.add_pod("web", cri, [Container("app", cid)])
            kube.kubectl(binary, "exec", "web", "--", "echo", "hi")

    ``mode``: ``"proxy"`` (default) splices each upgrade through to the runtime's streaming
    URL, ``"redirect"`` answers ``302`` to it. ``websocket``: ``"pass"`` (default) hands a
    WebSocket upgrade (kubectl >= 1.30 tries one first) to the runtime like any other, as an
    API server before 1.30 did; ``"refuse"`` answers it ``400`` here without asking the
    runtime, so kubectl falls back to SPDY: the runtime then sees only SPDY, as behind a
    kubelet (an API server >= 1.30 ends kubectl's WebSocket itself and goes on in SPDY).
    ``version``: what ``/version`` answers (it picks the kubectl that ``/usr/bin/kubectl``
    dispatches to, see :func:`kubectl_binaries`).
    """

    def __init__(self, *, mode: str = "proxy", websocket: str = "pass",
                 version: str = SERVER_VERSION, home: Path | None = None) -> None:
        if mode not in ("proxy", "redirect") or websocket not in ("pass", "refuse"):
            raise ValueError(f"mode {mode!r}, websocket {websocket!r}")
        self.mode = mode
        self.websocket = websocket
        self.version = version
        self.pods: dict[str, Pod] = {}
        self.streams: list[StreamRecord] = []
        self.log: list[tuple[str, str]] = []
        self._given_home = home
        self.home = Path()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    # -- set-up -----------------------------------------------------------------------------

    def start(self) -> None:
        self.home = self._given_home or Path(tempfile.mkdtemp(prefix="berth-kube-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "users": [{"name": "stub", "user": {}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub",
                                                      "namespace": "default"}}],
        }))

    def stop(self) -> None:
        """Stop serving, end every connection still open (kubectl's, and the runtime's ones
        being spliced), and join all the server's threads."""
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                for sock in self._sockets:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._given_home is None and self.home != Path():
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig"

    def track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.update(socks)

    def untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(socks)

    # -- pods -------------------------------------------------------------------------------

    def add_pod(self, name: str, cri: CRI, containers: list[Container] | Container,
                *, sandbox_id: str = "", namespace: str = "default") -> Pod:
        """Serve pod ``name`` (its containers on ``cri``)."""
        if isinstance(containers, Container):
            containers = [containers]
        pod = Pod(cri, list(containers), sandbox_id, namespace)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        self.pods.pop(name, None)

    def sandbox_of(self, pod: Pod) -> str:
        if not pod.sandbox_id:
            first = pod.containers[0].id
            found = pod.cri.runtime.ListContainers(pb.ListContainersRequest(
                filter=pb.ContainerFilter(id=first)), timeout=30).containers
            if not found:
                raise LookupError(f"no container {first} on {pod.cri.name}")
            pod.sandbox_id = found[0].pod_sandbox_id
        return pod.sandbox_id

    def version_info(self) -> dict[str, str]:
        major, minor = self.version.lstrip("v").split(".")[:2]
        return {"major": major, "minor": minor, "gitVersion": self.version,
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.22.0",
                "compiler": "gc", "platform": "linux/amd64"}

    def pod_object(self, name: str) -> dict[str, Any]:
        pod = self.pods[name]
        containers = [{"name": c.name, "image": c.image, "stdin": c.stdin, "tty": c.tty,
                       "imagePullPolicy": "IfNotPresent"} for c in pod.containers]
        statuses = [{"name": c.name, "ready": True, "restartCount": 0, "image": c.image,
                     "imageID": "", "containerID": f"cri://{c.id}", "started": True,
                     "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
                    for c in pod.containers]
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": pod.namespace, "uid": f"uid-{name}",
                             "resourceVersion": "1",
                             "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"containers": containers, "nodeName": "stub-node",
                         "restartPolicy": "Always"},
                "status": {"phase": pod.phase, "conditions": [
                    {"type": "Ready", "status": "True"}], "containerStatuses": statuses,
                    "podIP": "", "startTime": "2024-01-01T00:00:00Z"}}

    # -- kubectl ----------------------------------------------------------------------------

    def kubectl(self, binary: Path, *args: str, input: bytes | None = None,
                timeout: float = 60, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[bytes]:
        return run_kubectl(binary, self.kubeconfig, *args, input=input, timeout=timeout,
                           env=env)

    def background(self, binary: Path, *args: str, env: dict[str, str] | None = None,
                   stdin: bool = False) -> KubectlProcess:
        return KubectlProcess(binary, self.kubeconfig, *args, env=env, stdin=stdin)

    def terminal(self, binary: Path, *args: str, rows: int = 24, cols: int = 80,
                 env: dict[str, str] | None = None) -> KubectlTerminal:
        return KubectlTerminal(binary, self.kubeconfig, *args, rows=rows, cols=cols, env=env)

