"""Pod networking with real parts: network namespaces pinned by :mod:`berth.cri.netns`, and
Debian's real CNI plugins (``/usr/lib/cni``: bridge, host-local, portmap, loopback) run by
:mod:`berth.cri.cni` as containerd's CRI runs them.

Everything a test makes is its own: the bridge ``berthtest0`` on 10.201.0.0/24, a conf dir, a
results cache and host-local's ``dataDir`` under ``tmp_path``, namespaces under a base dir there
too. Fixtures take it all down even when a test fails: DEL of every pod a test set up, its
namespaces and the base dir's own bind mount, the bridge, and the portmap chains (the shared
``CNI-HOSTPORT-*`` ones only when they were not there before the test and hold nothing else).

A hostPort is reached from the host both at 127.0.0.1 (portmap's SNAT path: it sets
``route_localnet`` on the bridge and masquerades, so the pod sees the bridge's address) and at
the host's own non-loopback address (plain DNAT from OUTPUT).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root

from berth import errdefs
from berth.cri import cni as cnimod
from berth.cri import netns as netnsmod
from berth.cri.cni import CNI, Capabilities, PortMapping
from berth.cri.netns import NetNS

PLUGINS = Path("/usr/lib/cni")
BRIDGE = "berthtest0"
SUBNET = ipaddress.ip_network("10.201.0.0/24")
NETWORK = "berthtest"
SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
SHARED_JUMPS = (
    ("PREROUTING", "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"),
    ("POSTROUTING", '-m comment --comment "CNI portfwd requiring masquerade" '
                    "-j CNI-HOSTPORT-MASQ"),
)


# -- host helpers ------------------------------------------------------------------------------


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def mountinfo_lines(under: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if under in line]


def nat_rules() -> list[str]:
    return run("iptables-save", "-t", "nat").stdout.splitlines()


def portmap_chains_of(container_id: str) -> list[str]:
    """The per-pod ``CNI-DN-*`` chains portmap made for ``container_id``."""
    marker = f'id: \\"{container_id}\\"'
    return [line.rsplit("-j ", 1)[1] for line in nat_rules()
            if line.startswith("-A CNI-HOSTPORT-DNAT") and marker in line]


def remove_portmap_rules(container_ids: list[str], shared_existed: bool) -> None:
    """Take off what portmap left for these pods; the shared chains too when this test made
    them and nothing else uses them."""
    for line in nat_rules():
        if line.startswith("-A CNI-HOSTPORT-DNAT") and any(
                f'id: \\"{cid}\\"' in line for cid in container_ids):
            run("iptables", "-t", "nat", "-D", *shlex.split(line)[1:], check=False)
            chain = line.rsplit("-j ", 1)[1]
            run("iptables", "-t", "nat", "-F", chain, check=False)
            run("iptables", "-t", "nat", "-X", chain, check=False)
    rules = nat_rules()
    if shared_existed or any(r.startswith("-A CNI-HOSTPORT-DNAT") for r in rules):
        return
    for chain, jump in SHARED_JUMPS:
        run("iptables", "-t", "nat", "-D", chain, *shlex.split(jump), check=False)
    for chain in SHARED_CHAINS:
        run("iptables", "-t", "nat", "-F", chain, check=False)
        run("iptables", "-t", "nat", "-X", chain, check=False)


def shared_chains_exist() -> bool:
    return any(line.startswith(f":{SHARED_CHAINS[0]} ") for line in nat_rules())


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", name, check=False).returncode == 0


def host_address() -> str | None:
    """The host's own address on its default route (not loopback, not our bridge)."""
    out = run("ip", "-4", "route", "get", "192.0.2.123", check=False).stdout.split()
    if "src" not in out:
        return None
    address = out[out.index("src") + 1]
    return None if ipaddress.ip_address(address) in SUBNET else address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def ping(ns: NetNS, address: str) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={ns.path}", "busybox", "ping", "-c1", "-W2", address,
               check=False)


def ipam_allocations(ipam_dir: Path) -> list[str]:
    """host-local's reservations: one file per IP, named by it."""
    found = []
    for path in ipam_dir.rglob("*"):
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        found.append(path.name)
    return sorted(found)


def bridge_conflist(ipam_dir: Path, *, name: str = NETWORK, version: str = "1.0.0",
                    portmap: bool = True, extra: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": str(SUBNET)}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}}]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    plugins += extra or []
    return {"cniVersion": version, "name": name, "plugins": plugins}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def netns_base(tmp_path: Path) -> Iterator[Path]:
    """A base dir for namespaces; afterwards no namespace and no mount stays under it."""
    require_root()
    base = tmp_path / "netns"
    try:
        yield base
    finally:
        if base.is_dir():
            for entry in base.iterdir():
                NetNS.load(str(entry)).remove()
        while mountinfo_lines(f" {base} "):
            run("umount", "-l", str(base), check=False)


@pytest.fixture
def make_netns(netns_base: Path) -> Iterator[Callable[[], NetNS]]:
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = NetNS.create(str(netns_base))
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.remove()


@dataclass
class Pods:
    """A CNI over a private conf dir, cache and IPAM dir; every pod set up is torn down."""

    root: Path
    conf_dir: Path
    cache_dir: Path
    ipam_dir: Path
    bin_dirs: list[str]
    cni: CNI
    set_up: list[tuple[str, str]] = field(default_factory=list)

    def write(self, filename: str, config: dict[str, Any]) -> Path:
        path = self.conf_dir / filename
        path.write_text(json.dumps(config))
        return path

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def setup(self, container_id: str, ns: NetNS, args: list[tuple[str, str]] | None = None,
              capabilities: Capabilities | None = None) -> cnimod.Result:
        self.set_up.append((container_id, ns.path))
        return self.cni.setup(container_id, ns.path, args or [], capabilities)

    def cache_files(self) -> list[str]:
        results = self.cache_dir / "results"
        return sorted(p.name for p in results.iterdir()) if results.is_dir() else []


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    require_root()
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not (PLUGINS / plugin).exists():
            pytest.skip(f"{PLUGINS / plugin} missing (Debian's containernetworking-plugins)")
    if link_exists(BRIDGE):
        run("ip", "link", "del", BRIDGE)
    shared_existed = shared_chains_exist()
    root = tmp_path / "cni"
    conf_dir, cache_dir, ipam_dir, bin_dir = (root / "net.d", root / "cache", root / "ipam",
                                              root / "bin")
    for d in (conf_dir, bin_dir):
        d.mkdir(parents=True)
    bin_dirs = [str(bin_dir), str(PLUGINS)]
    p = Pods(root, conf_dir, cache_dir, ipam_dir, bin_dirs,
             CNI(str(conf_dir), bin_dirs, str(cache_dir)))
    try:
        yield p
    finally:
        for container_id, path in p.set_up:
            try:
                p.cni.remove(container_id, path)
            except errdefs.BerthError as e:
                logging.getLogger(__name__).warning("teardown DEL of %s: %s", container_id, e)
        if link_exists(BRIDGE):
            run("ip", "link", "del", BRIDGE)
        remove_portmap_rules([cid for cid, _ in p.set_up], shared_existed)


def plugin_script(pods: Pods, name: str, body: str) -> Path:
    """A CNI plugin of our own in the private bin dir (Python, for JSON)."""
    path = Path(pods.bin_dirs[0]) / name
    path.write_text("#!/usr/bin/python3\nimport json, os, sys, time\n" + body)
    path.chmod(0o755)
    return path


# -- network namespaces ------------------------------------------------------------------------


def test_netns_create_remove_leaves_no_mount(netns_base: Path) -> None:
    ns = NetNS.create(str(netns_base))
    name = os.path.basename(ns.path)
    assert re.fullmatch(r"cni-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        name)
    assert ns.pinned()
    pinned = mountinfo_lines(f" {ns.path} ")
    assert len(pinned) == 1 and " - nsfs " in pinned[0]
    base_mount = mountinfo_lines(f" {netns_base} ")
    assert len(base_mount) == 1 and "shared:" in base_mount[0]  # propagation, as iproute2

    ns.remove()
    assert not ns.pinned()
    assert not os.path.exists(ns.path)
    assert mountinfo_lines(ns.path) == []
    ns.remove()  # idempotent: already gone

    # A second namespace reuses the base mount, and does not stack another one.
    again = NetNS.create(str(netns_base))
    assert len(mountinfo_lines(f" {netns_base} ")) == 1
    run("umount", "-l", again.path)  # unmounted behind our back: remove still cleans up
    assert not again.pinned() and os.path.exists(again.path)
    again.remove()
    assert not os.path.exists(again.path)
    assert mountinfo_lines(str(again.path)) == []


def test_netns_create_failure_leaves_nothing(netns_base: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = netnsmod._unshare_and_pin

    def pin_then_fail(path: str) -> None:
        real(path)  # the namespace is mounted: create must take it off again
        raise OSError(5, "injected failure after the bind mount")

    monkeypatch.setattr(netnsmod, "_unshare_and_pin", pin_then_fail)
    with pytest.raises(errdefs.Internal, match=r"cannot create network namespace .*cni-"):
        NetNS.create(str(netns_base))
    assert list(netns_base.iterdir()) == []
    assert [line for line in mountinfo_lines(str(netns_base)) if " - nsfs " in line] == []

    not_a_dir = netns_base / "file"
    not_a_dir.write_text("")
    with pytest.raises(errdefs.Internal, match=str(not_a_dir)):
        NetNS.create(str(not_a_dir))
    not_a_dir.unlink()


def test_netns_run_executes_inside(make_netns: Callable[[], NetNS]) -> None:
    ns = make_netns()
    host_ns = os.readlink("/proc/thread-self/ns/net")

    assert ns.run(socket.if_nameindex) == [(1, "lo")]
    inside = ns.run(lambda: os.readlink("/proc/thread-self/ns/net"))
    assert inside == f"net:[{os.stat(ns.path).st_ino}]" != host_ns
    assert os.readlink("/proc/thread-self/ns/net") == host_ns  # the caller never moved

    with pytest.raises(ZeroDivisionError):
        ns.run(lambda: 1 // 0)

    ns.remove()
    with pytest.raises(errdefs.NotFound, match=ns.path):
        ns.run(socket.if_nameindex)


# -- configuration -----------------------------------------------------------------------------


def test_no_config_is_not_ready_until_one_is_dropped_in(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    cni = CNI(str(conf_dir), [str(PLUGINS)], str(tmp_path / "cache"))
    expected = (f"cni config load failed: no network config found in {conf_dir}: "
                "cni plugin not initialized: failed to load cni config")
    for _ in range(2):  # a missing dir, then an empty one: both as go-cni says it
        with pytest.raises(errdefs.FailedPrecondition) as caught:
            cni.load()
        assert str(caught.value) == expected
        assert cni.load_error == expected
        assert not cni.ready()
        with pytest.raises(errdefs.FailedPrecondition, match=r"^cni plugin not initialized$"):
            cni.status()
        conf_dir.mkdir(exist_ok=True)
    with pytest.raises(errdefs.FailedPrecondition, match=r"^cni plugin not initialized$"):
        cni.setup("abc", "/proc/self/ns/net")
    assert [n.ifname for n in cni.networks] == ["lo"]

    (conf_dir / "10-late.conflist").write_text(json.dumps(bridge_conflist(tmp_path / "ipam")))
    cni.load()
    assert cni.ready() and cni.load_error is None
    assert [(n.config.name, n.ifname) for n in cni.networks] == [
        ("cni-loopback", "lo"), (NETWORK, "eth0")]

    for f in conf_dir.iterdir():
        f.unlink()
    with pytest.raises(errdefs.FailedPrecondition):
        cni.load()
    assert not cni.ready()  # the config went away: so does readiness


def test_config_selection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "01-noplugins.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "empty", "plugins": []}))
    (conf_dir / "02-noversion.conflist").write_text(
        json.dumps({"name": "old", "plugins": [{"type": "bridge"}]}))
    (conf_dir / "03-noname.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}))
    (conf_dir / "04-broken.json").write_text("{not json")
    (conf_dir / "05-list-in-a.conf").write_text(json.dumps(bridge_conflist(tmp_path)))
    (conf_dir / "06-ignored.txt").write_text("{}")
    (conf_dir / "07-dir.conf").mkdir()
    single = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": BRIDGE}
    (conf_dir / "10-single.conf").write_text(json.dumps(single))
    (conf_dir / "20-later.conflist").write_text(json.dumps(bridge_conflist(tmp_path)))

    cni = CNI(str(conf_dir), [str(PLUGINS)], str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="berth.cri.cni"):
        cni.load()
    lo, main = cni.networks
    assert (lo.config.name, lo.config.cni_version, lo.ifname) == ("cni-loopback", "0.3.1", "lo")
    assert [p.type for p in lo.config.plugins] == ["loopback"]
    assert (main.config.name, main.config.cni_version, main.ifname) == ("single", "0.4.0",
                                                                         "eth0")
    assert [p.conf for p in main.config.plugins] == [single]  # a list of one
    assert json.loads(main.config.data) == {"cniVersion": "0.4.0", "name": "single",
                                            "plugins": [single]}
    skipped = "\n".join(r.getMessage() for r in caplog.records)
    assert "no plugins in list" in skipped and "01-noplugins.conflist" in skipped
    assert "no cniVersion" in skipped and "no name" in skipped
    assert "04-broken.json" in skipped and "network type not found" in skipped

    for name in ("10-single.conf", "20-later.conflist"):
        (conf_dir / name).unlink()
    with pytest.raises(errdefs.FailedPrecondition) as caught:
        cni.load()
    message = str(caught.value)
    assert message.startswith(f"cni config load failed: no valid networks found in {conf_dir}")
    assert "no plugins in list" in message and "invalid cni config" in message
    assert message.endswith("cni plugin not initialized: failed to load cni config")

    all_of_them = CNI(str(conf_dir), [str(PLUGINS)], str(tmp_path / "cache"), max_conf_num=0)
    (conf_dir / "30-a.conflist").write_text(json.dumps(bridge_conflist(tmp_path, name="a")))
    (conf_dir / "31-b.conflist").write_text(json.dumps(bridge_conflist(tmp_path, name="b")))
    all_of_them.load()
    assert [(n.config.name, n.ifname) for n in all_of_them.networks] == [
        ("cni-loopback", "lo"), ("a", "eth0"), ("b", "eth1")]


# -- ADD, DEL, CHECK with the real plugins -----------------------------------------------------


def test_two_pods_ping_each_other(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    pods.write("10-berthtest.conflist", bridge_conflist(pods.ipam_dir))
    pods.cni.load()
    a, b = make_netns(), make_netns()
    ra = pods.setup(pods.new_id(), a)
    rb = pods.setup(pods.new_id(), b)

    ip_a, extra_a = ra.pod_ips()
    ip_b, _ = rb.pod_ips()
    assert ipaddress.ip_address(ip_a) in SUBNET and ipaddress.ip_address(ip_b) in SUBNET
    assert ip_a != ip_b and extra_a == ()
    eth0 = ra.interfaces["eth0"]
    assert eth0.sandbox == a.path and eth0.ip_configs[0].gateway == "10.201.0.1"
    assert eth0.ip_configs[0].prefix_len == 24
    assert ra.interfaces["lo"].ip_configs[0].ip == "127.0.0.1"
    assert ra.interfaces[BRIDGE].sandbox == ""  # the host side: no IP goes there
    assert ra.interfaces[BRIDGE].ip_configs == ()

    assert sorted(n for _, n in a.run(socket.if_nameindex)) == ["eth0", "lo"]
    for ns, peer in ((a, ip_b), (b, ip_a), (a, "127.0.0.1")):
        done = ping(ns, peer)
        assert done.returncode == 0, done.stdout + done.stderr


def test_host_port_through_portmap(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    pods.write("10-berthtest.conflist", bridge_conflist(pods.ipam_dir))
    pods.cni.load()
    ns = make_netns()
    host_port = free_port()
    pod = pods.new_id()
    result = pods.setup(pod, ns, capabilities=Capabilities(
        port_mappings=(PortMapping(host_port, 8080, "TCP"), PortMapping(0, 9090))))
    pod_ip, _ = result.pod_ips()

    def listen() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 8080))
        s.listen(8)
        return s

    server = ns.run(listen)  # the socket stays in the pod's namespace

    def serve() -> None:
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"from {peer[0]}\n".encode())

    threading.Thread(target=serve, daemon=True).start()
    try:
        targets = ["127.0.0.1"] + [a for a in [host_address()] if a]
        for target in targets:
            with socket.create_connection((target, host_port), timeout=5) as c:
                greeting = c.recv(100).decode()
            # 127.0.0.1 is masqueraded to the bridge's address; the host's own address is not.
            expected = "10.201.0.1" if target == "127.0.0.1" else target
            assert greeting == f"from {expected}\n", target
        assert (Path("/proc/sys/net/ipv4/conf") / BRIDGE / "route_localnet").read_text() == "1\n"
        assert len(portmap_chains_of(pod)) == 1
        cached = json.loads((pods.cache_dir / "results" / f"{NETWORK}-{pod}-eth0").read_text())
        assert cached["capabilityArgs"] == {"portMappings": [
            {"hostPort": host_port, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}]}
    finally:
        server.close()

    pods.cni.remove(pod, ns.path)
    assert portmap_chains_of(pod) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", host_port), timeout=5).close()
    assert pod_ip not in ipam_allocations(pods.ipam_dir)


def test_del_releases_ipam_and_cache(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    pods.write("10-berthtest.conflist", bridge_conflist(pods.ipam_dir))
    conf_bytes = (pods.conf_dir / "10-berthtest.conflist").read_bytes()
    pods.cni.load()
    ns = make_netns()
    pod = pods.new_id()
    args = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web"),
            ("K8S_POD_INFRA_CONTAINER_ID", pod), ("K8S_POD_UID", "uid-1")]
    result = pods.setup(pod, ns, args, Capabilities(port_mappings=(PortMapping(0, 80),)))
    pod_ip, _ = result.pod_ips()

    assert ipam_allocations(pods.ipam_dir) == [pod_ip]
    assert pods.cache_files() == sorted([f"cni-loopback-{pod}-lo", f"{NETWORK}-{pod}-eth0"])
    cached = json.loads((pods.cache_dir / "results" / f"{NETWORK}-{pod}-eth0").read_text())
    assert cached["kind"] == "cniCacheV1"
    assert (cached["containerId"], cached["ifName"], cached["networkName"]) == (
        pod, "eth0", NETWORK)
    assert base64.b64decode(cached["config"]) == conf_bytes
    assert cached["cniArgs"] == [list(kv) for kv in args]
    assert cached["capabilityArgs"] == {"portMappings": []}
    assert cached["result"] == result.raw[1]
    assert oct((pods.cache_dir / "results").stat().st_mode & 0o777) == "0o700"

    pods.cni.check(pod, ns.path)  # CHECK passes right after ADD

    pods.cni.remove(pod, ns.path)
    assert ipam_allocations(pods.ipam_dir) == []
    assert pods.cache_files() == []
    assert portmap_chains_of(pod) == []
    assert sorted(n for _, n in ns.run(socket.if_nameindex)) == ["lo"]
    pods.cni.remove(pod, ns.path)  # again: nothing cached, the plugins' DEL is idempotent

    with pytest.raises(errdefs.FailedPrecondition, match="no cached result"):
        pods.cni.check(pod, ns.path)


def test_check_finds_a_broken_pod(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    pods.write("10-berthtest.conflist", bridge_conflist(pods.ipam_dir))
    pods.cni.load()
    ns = make_netns()
    pod = pods.new_id()
    pods.setup(pod, ns)
    pods.cni.check(pod, ns.path)
    run("nsenter", f"--net={ns.path}", "ip", "link", "del", "eth0")
    with pytest.raises(errdefs.BerthError, match=r'plugin type="bridge" name="berthtest" '
                                                 r"failed \(check\): .*eth0"):
        pods.cni.check(pod, ns.path)
    pods.cni.remove(pod, ns.path)
    assert ipam_allocations(pods.ipam_dir) == [] and pods.cache_files() == []


def test_del_after_the_netns_is_gone(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    calls = pods.root / "calls"
    plugin_script(pods, "recorder", f"""
conf = json.load(sys.stdin)
with open({str(calls)!r}, "a") as f:
    f.write(os.environ["CNI_COMMAND"] + " netns=" + repr(os.environ["CNI_NETNS"]) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps(conf["prevResult"]))
""")
    pods.write("10-berthtest.conflist", bridge_conflist(
        pods.ipam_dir, portmap=False, extra=[{"type": "recorder"}]))
    pods.cni.load()
    ns = make_netns()
    pod = pods.new_id()
    pods.setup(pod, ns)
    ns.remove()  # as after a crash: the namespace went first (and its veth end with it)
    pods.cni.remove(pod, ns.path)
    # containerd tears a closed namespace down with an empty path; the plugins cope.
    assert calls.read_text().splitlines() == [f"ADD netns={ns.path!r}", "DEL netns=''"]
    assert ipam_allocations(pods.ipam_dir) == [] and pods.cache_files() == []


def test_del_uses_the_cached_config_after_a_change(pods: Pods,
                                                   make_netns: Callable[[], NetNS]) -> None:
    first = pods.write("10-berthtest.conflist", bridge_conflist(pods.ipam_dir))
    pods.cni.load()
    ns1, ns2, ns3 = make_netns(), make_netns(), make_netns()
    pod1, pod2, pod3 = pods.new_id(), pods.new_id(), pods.new_id()
    ip1, _ = pods.setup(pod1, ns1).pod_ips()
    ip2, _ = pods.setup(pod2, ns2).pod_ips()
    ip3, _ = pods.setup(pod3, ns3).pod_ips()
    assert sorted(ipam_allocations(pods.ipam_dir)) == sorted([ip1, ip2, ip3])

    # Same network name, another IPAM dir: DEL must still release pod1's address where ADD
    # took it. Then the network is renamed: pod2's attachment is found in the cache alone.
    pods.write("10-berthtest.conflist", bridge_conflist(pods.root / "ipam-new"))
    pods.cni.load()
    pods.cni.remove(pod1, ns1.path)
    assert sorted(ipam_allocations(pods.ipam_dir)) == sorted([ip2, ip3])

    first.unlink()
    renamed = pods.write("10-renamed.conflist",
                         bridge_conflist(pods.root / "ipam-new", name="renamed"))
    pods.cni.load()
    pods.cni.remove(pod2, ns2.path)
    assert ipam_allocations(pods.ipam_dir) == [ip3]

    # No configuration at all (not ready): the cache still tears pod3 down.
    renamed.unlink()
    with pytest.raises(errdefs.FailedPrecondition):
        pods.cni.load()
    pods.cni.remove(pod3, ns3.path)
    assert ipam_allocations(pods.ipam_dir) == []
    assert pods.cache_files() == []
    assert sorted(n for _, n in ns3.run(socket.if_nameindex)) == ["lo"]


def test_failing_plugin_is_named_and_undone(pods: Pods, make_netns: Callable[[], NetNS],
                                            caplog: pytest.LogCaptureFixture) -> None:
    calls = pods.root / "calls"
    plugin_script(pods, "berthfail", f"""
command = os.environ["CNI_COMMAND"]
conf = json.load(sys.stdin)
with open({str(calls)!r}, "a") as f:
    f.write(command + " " + ("prev" if "prevResult" in conf else "noprev") + "\\n")
if command == "ADD":
    sys.stderr.write("berthfail: refusing on purpose\\n")
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 7,
                      "msg": "berthfail refuses", "details": "by design"}}))
    sys.exit(1)
""")
    pods.write("10-berthtest.conflist", bridge_conflist(
        pods.ipam_dir, portmap=False, extra=[{"type": "berthfail"}]))
    pods.cni.load()
    ns = make_netns()
    pod = pods.new_id()
    with caplog.at_level(logging.INFO, logger="berth.cri.cni"), \
            pytest.raises(errdefs.Internal) as caught:
        pods.setup(pod, ns)
    assert str(caught.value) == ('plugin type="berthfail" name="berthtest" failed (add): '
                                 "berthfail refuses; by design (CNI error code 7)")
    assert any("berthfail: refusing on purpose" in r.getMessage() for r in caplog.records)
    # The failed ADD undid itself: DEL of the chain (no result cached, so no prevResult).
    assert calls.read_text().splitlines() == ["ADD prev", "DEL noprev"]
    assert ipam_allocations(pods.ipam_dir) == []
    assert pods.cache_files() == []
    assert sorted(n for _, n in ns.run(socket.if_nameindex)) == ["lo"]

    pods.cni.remove(pod, ns.path)  # the caller's DEL, as containerd's, works and changes nothing
    assert calls.read_text().splitlines()[-1] == "DEL noprev"
    assert ipam_allocations(pods.ipam_dir) == [] and pods.cache_files() == []


def test_plugin_environment_stdin_and_prev_result(pods: Pods, make_netns: Callable[[], NetNS],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen = pods.root / "seen"
    seen.mkdir()
    body = f"""
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
me = os.path.basename(sys.argv[0])
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_") or k == "BERTH_MARK"}}
with open(os.path.join({str(seen)!r}, command + "-" + me), "w") as f:
    json.dump({{"env": env, "conf": conf}}, f)
if command == "ADD":
    prev = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [
        {{"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}}],
        "ips": [{{"interface": 0, "address": "10.201.0.77/24"}},
                {{"interface": 0, "address": "fd00::77/64"}}]}}
    prev.setdefault("seenBy", []).append(me)
    print(json.dumps(prev))
"""
    plugin_script(pods, "first", body)
    plugin_script(pods, "second", body)
    config = {"cniVersion": "1.0.0", "name": "recorded", "plugins": [
        {"type": "first", "capabilities": {"portMappings": True, "bandwidth": False}},
        {"type": "second", "capabilities": {"bandwidth": True, "dns": True},
         "runtimeConfig": {"overwritten": True}}]}
    pods.write("10-recorded.conflist", config)
    pods.cni.load()
    monkeypatch.setenv("BERTH_MARK", "inherited")
    ns = make_netns()
    pod = pods.new_id()
    args = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "ns"), ("K8S_POD_NAME", "p")]
    caps = Capabilities(port_mappings=(PortMapping(8080, 80, "UDP", "127.0.0.1"),),
                        bandwidth=cnimod.Bandwidth(1000, 2000, 3000, 4000),
                        dns=cnimod.DNSConfig(("10.0.0.10",), ("svc.local",), ("ndots:5",)))
    result = pods.setup(pod, ns, args, caps)
    assert result.pod_ips() == ("10.201.0.77", ("fd00::77",))

    def record(name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((seen / name).read_text())
        return data

    first, second = record("ADD-first"), record("ADD-second")
    assert first["env"] == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod, "CNI_NETNS": ns.path,
        "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
        "CNI_PATH": ":".join(pods.bin_dirs), "BERTH_MARK": "inherited"}
    assert first["conf"] == {
        "type": "first", "name": "recorded", "cniVersion": "1.0.0",
        "capabilities": {"portMappings": True, "bandwidth": False},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                            "protocol": "udp", "hostIP": "127.0.0.1"}]}}
    assert second["conf"]["runtimeConfig"] == {
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2000, "egressRate": 3000,
                      "egressBurst": 4000},
        "dns": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]}}
    assert second["conf"]["prevResult"]["seenBy"] == ["first"]

    pods.cni.check(pod, ns.path)
    check = record("CHECK-first")
    assert check["conf"]["prevResult"]["seenBy"] == ["first", "second"]

    pods.cni.remove(pod, ns.path, [("IgnoreUnknown", "1")])
    del_first, del_second = record("DEL-first"), record("DEL-second")
    assert del_second["conf"]["prevResult"]["seenBy"] == ["first", "second"]
    assert del_first["env"]["CNI_ARGS"] == first["env"]["CNI_ARGS"]  # as cached at ADD
    assert (seen / "DEL-second").stat().st_mtime_ns <= (seen / "DEL-first").stat().st_mtime_ns
    assert pods.cache_files() == []


def test_plugin_timeout(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    plugin_script(pods, "sleeper", """
if os.environ["CNI_COMMAND"] == "ADD":
    time.sleep(60)
""")
    pods.write("10-slow.conflist", {"cniVersion": "1.0.0", "name": "slow",
                                    "plugins": [{"type": "sleeper"}]})
    slow = CNI(str(pods.conf_dir), pods.bin_dirs, str(pods.cache_dir), plugin_timeout=1.0)
    slow.load()
    ns = make_netns()
    start = time.monotonic()
    with pytest.raises(errdefs.DeadlineExceeded,
                       match=r'plugin type="sleeper" name="slow" failed \(add\): timed out'):
        slow.setup(pods.new_id(), ns.path)
    assert time.monotonic() - start < 30
    assert pods.cache_files() == []


def test_missing_plugin_and_bad_input(pods: Pods, make_netns: Callable[[], NetNS]) -> None:
    pods.write("10-missing.conflist", {"cniVersion": "1.0.0", "name": "missing",
                                       "plugins": [{"type": "no-such-plugin"}]})
    pods.cni.load()
    ns = make_netns()
    with pytest.raises(errdefs.FailedPrecondition,
                       match=r'failed \(add\): failed to find plugin "no-such-plugin" in path'):
        pods.cni.setup(pods.new_id(), ns.path)
    with pytest.raises(errdefs.InvalidArgument, match="container id"):
        pods.cni.setup("../escape", ns.path)
    with pytest.raises(errdefs.InvalidArgument, match="CNI_ARGS"):
        pods.cni.setup(pods.new_id(), ns.path, [("A", "b;C=d")])
    with pytest.raises(errdefs.FailedPrecondition, match="not a network namespace"):
        pods.cni.setup(pods.new_id(), str(pods.root))
    assert pods.cache_files() == []
