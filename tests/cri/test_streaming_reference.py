"""CRI streaming (exec, attach, port-forward) driven by real kubectls through the stub API server
of ``kube_stub``, as a kubelet would relay them, against containerd 1.6.20's CRI streaming
server: the reference that Berth's own streaming server must match. Every test runs once per
daemon in ``DAEMONS`` (containerd, and berthd) and per kubectl (Debian's 1.20, SPDY only;
``/usr/bin/kubectl`` 1.32, WebSocket first, then SPDY); a daemon whose CRI Exec answers
UNIMPLEMENTED is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import require_root
from cri_fixtures import CRI, container_config, cri_daemons, pod_config
from images import ImageInfo
from kube_stub import Container, KubectlProcess, KubeStub, StreamRecord, kubectl_binaries

from berth.api.cri.runtime.v1 import api_pb2 as pb

NET = 6
DAEMONS = ("containerd", "berthd")
KUBECTLS = ("1.20", "1.32")
HTTP_PORT, ECHO_PORT, CLOSED_PORT = 8080, 9000, 9999
BIG = 1 << 20

# The pod every test shares: busybox httpd (an index and a 1 MiB random file) and a
# persistent echo server (`nc -ll -e cat`), in two containers of one sandbox.
WEB_SCRIPT = (f"mkdir -p /www && echo hello > /www/index.html && head -c {BIG} /dev/urandom"
              f" > /www/big && exec busybox httpd -f -p {HTTP_PORT} -h /www")
ECHO_SCRIPT = f"exec nc -ll -p {ECHO_PORT} -e cat"
READY_SCRIPT = (f'i=0; while [ $i -lt 200 ]; do n=$(netstat -ltn); case "$n" in *":{HTTP_PORT} "*)'
                f' case "$n" in *":{ECHO_PORT} "*) exit 0;; esac;; esac; sleep 0.05;'
                " i=$((i+1)); done; exit 1")


@dataclass
class Runtime:
    """One daemon's side of the tests: its pod (sandbox, config), the served web container,
    and the stub pod name that points at it."""

    name: str
    cri: CRI
    image: str
    log_dir: Path
    pod_id: str = ""
    pod: pb.PodSandboxConfig = field(default_factory=pb.PodSandboxConfig)
    web: str = ""
    big_sha256: str = ""
    serial: int = 0

    @property
    def web_pod(self) -> str:
        return f"{self.name}-web"

    def container(self, name: str, script: str, **kwargs: bool) -> str:
        """Create and start one more container in the pod."""
        return self.cri.run(self.pod_id, container_config(name, self.image, script, **kwargs),
                            self.pod)


def _streaming_unimplemented(c: CRI) -> bool:
    try:
        c.runtime.Exec(pb.ExecRequest(container_id="0" * 64, cmd=["true"], stdout=True),
                       timeout=30)
    except grpc.RpcError as err:
        return err.code() == grpc.StatusCode.UNIMPLEMENTED
    return False


class _Runtimes:
    """Each daemon set up on first use (a skip remembered), torn down with the module."""

    def __init__(self, daemons: dict[str, CRI], kube: KubeStub, image: str, base: Path) -> None:
        self.daemons, self.kube, self.image, self.base = daemons, kube, image, base
        self.ready: dict[str, Runtime | str | BaseException] = {}

    def get(self, name: str) -> Runtime:
        if name not in self.ready:
            try:
                self.ready[name] = self._set_up(name)
            except Exception as err:
                self.ready[name] = err
        got = self.ready[name]
        if isinstance(got, str):
            pytest.skip(got)
        if isinstance(got, BaseException):
            raise AssertionError(f"setting up {name} failed: {got!r}") from got
        return got

    def _set_up(self, name: str) -> Runtime | str:
        c = self.daemons[name]
        if _streaming_unimplemented(c):
            return f"{name}'s CRI Exec answers UNIMPLEMENTED (no streaming server yet)"
        log_dir = self.base / "pod-logs" / name
        log_dir.mkdir(parents=True)
        rt = Runtime(name, c, self.image, log_dir)
        c.pull(self.image)
        rt.pod = pod_config("stream", log_dir)
        rt.pod_id = c.run_pod(rt.pod)
        rt.web = rt.container("web", WEB_SCRIPT)
        rt.container("echo", ECHO_SCRIPT)
        ready = c.exec_sync(rt.web, "sh", "-c", READY_SCRIPT, timeout=30)
        assert ready.exit_code == 0, ready
        digest = c.exec_sync(rt.web, "sha256sum", "/www/big")
        rt.big_sha256 = digest.stdout.decode().split()[0]
        self.kube.add_pod(rt.web_pod, c, Container("web", rt.web), sandbox_id=rt.pod_id)
        return rt

    def tear_down(self) -> None:
        for rt in self.ready.values():
            if isinstance(rt, Runtime):
                with contextlib.suppress(grpc.RpcError):
                    rt.cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(
                        pod_sandbox_id=rt.pod_id), timeout=60)
                rt.cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(
                    pod_sandbox_id=rt.pod_id), timeout=60)


@pytest.fixture(scope="module")
def kubectls() -> dict[str, Path]:
    return kubectl_binaries()


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeStub]:
    with KubeStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
             busybox_image: ImageInfo, kube: KubeStub) -> Iterator[_Runtimes]:
    require_root()
    base = tmp_path_factory.mktemp("cri-streaming")
    with cri_daemons(base, pause_image, net=NET) as clients:
        found = _Runtimes(clients, kube, busybox_image.ref, base)
        try:
            yield found
        finally:
            found.tear_down()


@pytest.fixture(params=DAEMONS)
def rt(request: pytest.FixtureRequest, runtimes: _Runtimes) -> Runtime:
    return runtimes.get(request.param)


@dataclass(frozen=True)
class Kubectl:
    version: str
    path: Path

    @property
    def websocket_first(self) -> bool:
        """kubectl >= 1.30 tries WebSocket (v5.channel.k8s.io) before SPDY."""
        major, minor = (int(x) for x in self.version.split("."))
        return (major, minor) >= (1, 30)


@pytest.fixture(params=KUBECTLS)
def kubectl(request: pytest.FixtureRequest, kubectls: dict[str, Path]) -> Kubectl:
    if request.param not in kubectls:
        pytest.skip(f"no kubectl {request.param} on this machine")
    return Kubectl(request.param, kubectls[request.param])


def _ok(done: Any) -> Any:
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    return done



def _last_upgrade(kube: KubeStub, kind: str) -> StreamRecord:
    """The stream kubectl finally used: its last request for ``kind``."""
    return [s for s in kube.streams if s.kind == kind][-1]


def _offers(kube: KubeStub, since: int) -> list[tuple[str, str, list[str], str, list[str]]]:
    """What kubectl asked for since ``since`` (streams index): method, upgrade, offered
    protocols, the runtime's status line, and the protocol it chose."""
    out = []
    for s in kube.streams[since:]:
        upgrade = (s.header_values("Upgrade") or [""])[0]
        offered = (s.header_values("X-Stream-Protocol-Version") if upgrade.startswith("SPDY")
                   else [p.strip() for v in s.header_values("Sec-WebSocket-Protocol")
                         for p in v.split(",")])
        chosen = s.answer_values("X-Stream-Protocol-Version") or s.answer_values(
            "Sec-WebSocket-Protocol")
        out.append((s.method, upgrade, offered, s.answer.split(" ")[0], chosen))
    return out


# -- exec ---------------------------------------------------------------------------------------


def test_exec_echo(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """The plain case, and what each kubectl offers: 1.20 SPDY/3.1 with v4..v1; 1.32 first a
    WebSocket GET offering only v5.channel.k8s.io, which containerd refuses (403, no headers),
    then SPDY/3.1 offering v5..v1, of which the runtime picks v4.channel.k8s.io. (A runtime
    that speaks v5 over WebSocket itself is used as such, with no fallback.)"""
    since = len(kube.streams)
    done = _ok(kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", "echo", "hi"))
    offers = _offers(kube, since)
    spdy = ("POST", "SPDY/3.1", ["v4.channel.k8s.io", "v3.channel.k8s.io",
                                 "v2.channel.k8s.io", "channel.k8s.io"], "101",
            ["v4.channel.k8s.io"])
    if not kubectl.websocket_first:
        assert offers == [spdy]
    else:
        websocket = offers[0]
        assert websocket[:3] == ("GET", "websocket", ["v5.channel.k8s.io"])
        if websocket[3] == "101":
            assert offers == [(*websocket[:4], ["v5.channel.k8s.io"])]
        else:
            assert offers[1:] == [(spdy[0], spdy[1], ["v5.channel.k8s.io", *spdy[2]],
                                   *spdy[3:])]
    assert (done.stdout, done.stderr) == (b"hi\n", b"")


def test_exec_stdout_and_stderr_apart(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    done = _ok(kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", "sh", "-c",
                            "echo out; echo err >&2; printf 'no newline'; printf 'e2' >&2"))
    assert (done.stdout, done.stderr) == (b"out\nno newline", b"err\ne2")


def test_exec_stdin_to_eof(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """stdin reaches the process, and its end closes the process's stdin."""
    done = _ok(kube.kubectl(kubectl.path, "exec", "-i", rt.web_pod, "--", "sh", "-c",
                            "cat; echo end of input", input=b"line one\nline two\n"))
    assert done.stdout == b"line one\nline two\nend of input\n"
    empty = _ok(kube.kubectl(kubectl.path, "exec", "-i", rt.web_pod, "--", "wc", "-c",
                             input=b""))
    assert empty.stdout.split() == [b"0"]


def test_exec_one_mebibyte(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    data = bytes(range(256)) * (BIG // 256)
    counted = _ok(kube.kubectl(kubectl.path, "exec", "-i", rt.web_pod, "--", "wc", "-c",
                               input=data))
    assert counted.stdout.split() == [str(BIG).encode()]
    echoed = _ok(kube.kubectl(kubectl.path, "exec", "-i", rt.web_pod, "--", "cat", input=data))
    assert echoed.stdout == data
    out = _ok(kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", "cat", "/www/big"))
    assert hashlib.sha256(out.stdout).hexdigest() == rt.big_sha256


def test_exec_exit_code(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """A non-zero exit comes back as kubectl's own exit code (the v4 status's ExitCode
    cause)."""
    done = kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", "sh", "-c", "echo x; exit 3")
    assert (done.returncode, done.stdout) == (3, b"x\n")
    assert done.stderr == b"command terminated with exit code 3\n"
    big = kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", "sh", "-c", "kill -9 $$")
    assert (big.returncode, big.stderr) == (137, b"command terminated with exit code 137\n")


@pytest.mark.parametrize(("command", "why"), [
    ("/no/such", b'exec: "/no/such": stat /no/such: no such file or directory'),
    ("nosuch", b'exec: "nosuch": executable file not found in $PATH'),
], ids=["path", "lookup"])
def test_exec_missing_binary(rt: Runtime, kube: KubeStub, kubectl: Kubectl, command: str,
                             why: bytes) -> None:
    """Not an exit code: the runtime's Failure status (reason InternalError), printed by
    kubectl as ``error: Internal error occurred: ...``, and kubectl exits 1."""
    done = kube.kubectl(kubectl.path, "exec", rt.web_pod, "--", command)
    assert (done.returncode, done.stdout) == (1, b"")
    # containerd: "error: Internal error occurred: error executing command in container:
    # failed to exec in container: failed to start exec "<id>": OCI runtime exec failed: ..."
    assert re.search(rb"^error: Internal error occurred: error executing command in container: "
                     rb"failed to exec in container: failed to start exec \"[0-9a-f]+\": .*%s"
                     % re.escape(why), done.stderr, re.MULTILINE), done.stderr


def test_exec_in_exited_container(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """CRI Exec itself refuses a container that is not running (containerd: UNKNOWN,
    ``container is in CONTAINER_EXITED state``); no URL, so kubectl gets the API error."""
    rt.serial += 1
    dead = rt.container(f"dead-{rt.serial}", "exit 0")
    assert rt.cri.wait_exited(dead).state == pb.CONTAINER_EXITED
    name = f"{rt.name}-dead-{rt.serial}"
    kube.add_pod(name, rt.cri, Container("dead", dead), sandbox_id=rt.pod_id)
    done = kube.kubectl(kubectl.path, "exec", name, "--", "true")
    assert done.returncode == 1
    assert b"container is in CONTAINER_EXITED state" in done.stderr
    record = _last_upgrade(kube, "exec")
    assert (record.pod, record.runtime_url) == (name, "")
    assert record.error == "UNKNOWN: container is in CONTAINER_EXITED state"


# Wait (10 s at most) for the tty to have a size: it has none until the resize stream's first
# message is applied (busybox's `stty size` fails on 0x0).
_WAIT_SIZE = ("i=0; until [ \"$(stty size 2>/dev/null)\" = '{until}' ] || [ $i -ge 200 ];"
              " do sleep 0.05; i=$((i+1)); done")


def test_exec_tty_size(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """``exec -it`` under a real terminal: the process gets a tty, sized from kubectl's
    terminal (it starts at 0x0 and the size follows on the resize stream a moment later, so
    the script waits for it), resized when the terminal is, and its exit code comes back."""
    script = (f"{_WAIT_SIZE.format(until='33 101')}; echo \"size1: $(stty size) $(tty)\";"
              f" {_WAIT_SIZE.format(until='40 120')}; echo \"size2: $(stty size)\"; exit 5")
    with kube.terminal(kubectl.path, "exec", "-it", rt.web_pod, "--", "sh", "-c", script,
                       rows=33, cols=101) as term:
        term.wait_for(re.compile(rb"size1: 33 101 /dev/pts/\d+\r\n"))
        term.resize(40, 120)
        term.wait_for(re.compile(rb"size2: 40 120\r\n"))
        assert term.wait() == 5
    record = _last_upgrade(kube, "exec")
    assert (record.query["tty"], record.query["stdin"]) == (["true"], ["true"])
    assert "stderr" not in record.query  # a tty has no separate stderr


def test_exec_tty_interactive(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    with kube.terminal(kubectl.path, "exec", "-it", rt.web_pod, "--", "sh") as term:
        term.wait_for(b"# ")
        term.write(b"echo $((6 * 7))\r")
        term.wait_for(b"42\r\n")
        term.write(b"exit 0\r")
        assert term.wait() == 0


# -- attach -------------------------------------------------------------------------------------


def test_attach_stdin(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """``attach -i`` to a container made with stdin (and stdin_once): input goes to its
    process, and the end of it closes the process's stdin, so the container exits and kubectl
    with it."""
    rt.serial += 1
    cid = rt.container(f"attach-{rt.serial}", "cat; echo stdin closed", stdin=True,
                       stdin_once=True)
    name = f"{rt.name}-attach-{rt.serial}"
    kube.add_pod(name, rt.cri, Container("attached", cid, stdin=True), sandbox_id=rt.pod_id)
    done = _ok(kube.kubectl(kubectl.path, "attach", "-i", name, input=b"hello\nworld\n"))
    assert done.stdout == b"hello\nworld\nstdin closed\n"
    status = rt.cri.wait_exited(cid)
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 0)
    record = _last_upgrade(kube, "attach")
    assert record.answer.startswith("101")


def test_attach_tty(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """``attach -it`` to a shell on a tty: keystrokes in, echo and output back, the terminal
    size sent, and kubectl ends when the shell exits."""
    rt.serial += 1
    cid = rt.container(f"tty-{rt.serial}", "exec sh", stdin=True, tty=True)
    name = f"{rt.name}-tty-{rt.serial}"
    kube.add_pod(name, rt.cri, Container("shell", cid, stdin=True, tty=True),
                 sandbox_id=rt.pod_id)
    with kube.terminal(kubectl.path, "attach", "-it", name, rows=31, cols=97) as term:
        term.wait_for(b"If you don't see a command prompt, try pressing enter.")
        term.write(b"echo $((6 * 7))\r")
        term.wait_for(b"42\r\n")
        term.write(_WAIT_SIZE.format(until="31 97").encode() + b'; echo "size: $(stty size)"\r')
        term.wait_for(b"size: 31 97\r\n")
        term.write(b"exit\r")
        assert term.wait() == 0
    status = rt.cri.wait_exited(cid)
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 0)


# -- port-forward ---------------------------------------------------------------------------------


def _forwarded(k: KubectlProcess, port: int) -> int:
    """The local port kubectl forwards to the pod's ``port``."""
    found = k.stdout.wait_for(re.compile(rb"Forwarding from 127\.0\.0\.1:(\d+) -> %d\n" % port),
                              30)
    return int(found.group(1))


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return bytes(reply.read())


def _echo(port: int, data: bytes) -> bytes:
    """Send ``data`` to the echo server and read as much back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = bytearray()
        sender = threading.Thread(target=conn.sendall, args=(data,))
        sender.start()
        while len(back) < len(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            back += chunk
        sender.join()
        return bytes(back)


def test_port_forward_sequential(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    with kube.background(kubectl.path, "port-forward", rt.web_pod, f":{HTTP_PORT}",
                         f":{ECHO_PORT}") as k:
        http, echo = _forwarded(k, HTTP_PORT), _forwarded(k, ECHO_PORT)
        for _ in range(5):
            assert _get(http, "/index.html") == b"hello\n"
        assert hashlib.sha256(_get(http, "/big")).hexdigest() == rt.big_sha256
        for n in range(3):
            data = bytes([n]) * 1000 + bytes(range(256)) * 256
            assert _echo(echo, data) == data
        assert k.proc.poll() is None
    record = _last_upgrade(kube, "portforward")
    assert record.header_values("X-Stream-Protocol-Version") == ["portforward.k8s.io"]
    assert record.answer_values("X-Stream-Protocol-Version") == ["portforward.k8s.io"]


def test_port_forward_parallel(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    with kube.background(kubectl.path, "port-forward", rt.web_pod, f":{HTTP_PORT}",
                         f":{ECHO_PORT}") as k:
        http, echo = _forwarded(k, HTTP_PORT), _forwarded(k, ECHO_PORT)
        results: dict[str, bool] = {}

        def fetch(i: int) -> None:
            results[f"get{i}"] = hashlib.sha256(_get(http, "/big")).hexdigest() == rt.big_sha256

        def talk(i: int) -> None:
            data = hashlib.sha256(bytes([i])).digest() * (BIG // 4 // 32)
            results[f"echo{i}"] = _echo(echo, data) == data

        workers = [threading.Thread(target=f, args=(i,)) for i in range(4)
                   for f in (fetch, talk)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert results == {f"{kind}{i}": True for i in range(4) for kind in ("get", "echo")}
        assert k.proc.poll() is None


def _closed_without_data(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        try:
            return conn.recv(100) == b""
        except ConnectionResetError:
            return True


def test_port_forward_closed_port(rt: Runtime, kube: KubeStub, kubectl: Kubectl) -> None:
    """Nothing listens: the local connection is closed without data and kubectl reports the
    runtime's error (connection refused in the pod's netns); 1.20 goes on forwarding, newer
    kubectls exit 1 ("lost connection to pod")."""
    with kube.background(kubectl.path, "port-forward", rt.web_pod, f":{CLOSED_PORT}") as k:
        local = _forwarded(k, CLOSED_PORT)
        assert _closed_without_data(local)
        # containerd: "... uid : failed to execute portforward in network namespace "<path>":
        # failed to connect to localhost:9999 inside namespace "<id>", IPv4: dial tcp4
        # 127.0.0.1:9999: connect: connection refused IPv6 dial tcp6: address localhost: no
        # suitable address found"
        k.stderr.wait_for(re.compile(
            # (kubectl's log escapes the quotes)
            rb'error forwarding port %d to pod %s, uid : failed to execute portforward in network '
            rb'namespace \\?"[^"\\]+\\?": failed to connect to localhost:%d inside namespace '
            rb'\\?"%s\\?", IPv4: dial tcp4 127.0.0.1:%d: connect: connection refused'
            % (CLOSED_PORT, rt.pod_id.encode(), CLOSED_PORT, rt.pod_id.encode(), CLOSED_PORT)),
            30)
        if kubectl.websocket_first:
            k.stderr.wait_for(b"error: lost connection to pod", 30)
            assert k.wait() == 1
        else:
            # Still serving: the next connection is forwarded (and refused) again.
            assert _closed_without_data(local)
            assert k.proc.poll() is None


# -- the stub's other mode ------------------------------------------------------------------------


def test_redirect_mode(rt: Runtime, kubectl: Kubectl) -> None:
    """Both kubectls also follow a ``302 Found`` to the runtime's URL on the SPDY path (client-go's
    SPDY dialer follows redirects, as GET), though not on 1.32's WebSocket attempt, which then
    falls back: the runtime must serve its URLs to GET as to POST."""
    with KubeStub(mode="redirect") as kube:
        kube.add_pod("web", rt.cri, Container("web", rt.web), sandbox_id=rt.pod_id)
        done = kube.kubectl(kubectl.path, "exec", "-i", "web", "--", "sh", "-c", "cat; exit 4",
                            input=b"through a redirect")
        assert (done.returncode, done.stdout) == (4, b"through a redirect")
        with kube.background(kubectl.path, "port-forward", "web", f":{HTTP_PORT}") as k:
            assert _get(_forwarded(k, HTTP_PORT), "/index.html") == b"hello\n"
        assert {s.answer for s in kube.streams} == {"302 Found"}


def test_spdy_behind_a_new_api_server(rt: Runtime, kubectl: Kubectl) -> None:
    """What a runtime sees behind a kubelet, whatever the kubectl: SPDY only. With the stub
    refusing WebSocket, kubectl >= 1.30 falls back to SPDY and offers v5.channel.k8s.io first
    (as an API server >= 1.30 translating kubectl's WebSocket does towards the kubelet):
    containerd picks v4; exec, stdin to EOF, exit codes, a tty and port-forward all work."""
    if not kubectl.websocket_first:
        pytest.skip("kubectl 1.20 speaks SPDY only: the other tests cover it")
    with KubeStub(websocket="refuse") as kube:
        kube.add_pod("web", rt.cri, Container("web", rt.web), sandbox_id=rt.pod_id)
        data = bytes(range(256)) * (BIG // 256)
        counted = _ok(kube.kubectl(kubectl.path, "exec", "-i", "web", "--", "wc", "-c",
                                   input=data))
        assert (counted.stdout.split(), counted.stderr) == ([str(BIG).encode()], b"")
        done = kube.kubectl(kubectl.path, "exec", "web", "--", "sh", "-c", "echo x >&2; exit 3")
        assert (done.returncode, done.stderr) == (3, b"x\ncommand terminated with exit code 3\n")
        with kube.terminal(kubectl.path, "exec", "-it", "web", "--", "sh", "-c",
                           f"{_WAIT_SIZE.format(until='29 91')}; stty size", rows=29,
                           cols=91) as term:
            term.wait_for(b"29 91\r\n")
            assert term.wait() == 0
        with kube.background(kubectl.path, "port-forward", "web", f":{HTTP_PORT}") as k:
            assert _get(_forwarded(k, HTTP_PORT), "/index.html") == b"hello\n"
        offers = _offers(kube, 0)
        assert [o[:4] for o in offers[::2]] == [("GET", "websocket", [want], "400") for want in
                                                ["v5.channel.k8s.io"] * 3
                                                + ["SPDY/3.1+portforward.k8s.io"]]
        spdy = offers[1::2]
        assert [o[:4] for o in spdy] == [("POST", "SPDY/3.1", [
            "v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
            "channel.k8s.io"], "101")] * 3 + [("POST", "SPDY/3.1", ["portforward.k8s.io"],
                                               "101")]
        chosen = [o[4] for o in spdy]
        assert all(len(c) == 1 and c[0] in o[2] for c, o in zip(chosen, spdy, strict=True))
        if rt.name == "containerd":
            assert chosen == [["v4.channel.k8s.io"]] * 3 + [["portforward.k8s.io"]]
