"""Pod sandboxes and containers through the CRI, against containerd 1.6.20's CRI plugin: the
same call sequences on both daemons, and what each answers compared (states, reasons, exit
codes, records, specs, logs, errors for bad input).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Ctr, require_root
from cri_fixtures import CRI, NS, container_config, cri_daemons, pod_config
from images import ImageInfo

from berth.api.cri.runtime.v1 import api_pb2 as pb

HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory, pause_image: str,
            busybox_image: ImageInfo) -> Iterator[dict[str, CRI]]:
    require_root()
    base = tmp_path_factory.mktemp("cri-pods")
    with cri_daemons(base, pause_image) as clients:
        for c in clients.values():
            c.pull(busybox_image.ref)
        yield clients


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("berthd", "containerd"):
        out[name] = tmp_path / name
        out[name].mkdir()
    return out


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _normalize(doc: Any, subs: dict[str, str]) -> Any:
    text = json.dumps(doc, sort_keys=True)
    for old, new in subs.items():
        text = text.replace(old, new)
    return json.loads(text)


def _log_lines(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        stamp, stream, tag, message = line.split(" ", 3)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
        out.append((stream, tag, message))
    return out


def test_pod_and_container_lifecycle(daemons: dict[str, CRI], logs: dict[str, Path],
                                     busybox_image: ImageInfo) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for name, c in daemons.items():
        pod = pod_config("web", logs[name], labels={"app": "web"}, annotations={"a": "1"},
                         dns_config=pb.DNSConfig(servers=["10.0.0.10"], searches=["svc.local"],
                                                 options=["ndots:5"]))
        pod_id = c.run_pod(pod)
        assert HEX64.fullmatch(pod_id)
        status = c.pod_status(pod_id, verbose=True)
        cfg = container_config("app", busybox_image.ref,
                               "echo out; echo err >&2; printf partial; exec sleep 1000",
                               envs=[pb.KeyValue(key="K", value="V")], working_dir="/tmp",
                               labels={"tier": "1"}, annotations={"b": "2"})
        cid = c.run(pod_id, cfg, pod)
        running = c.container_status(cid, verbose=True)
        exec_out = c.exec_sync(cid, "sh", "-c", "id; echo $K $HOSTNAME; pwd; cat /etc/resolv.conf"
                               " /etc/hostname; exit 3")
        c.stop(cid, timeout=10)
        stopped = c.container_status(cid).status
        listed = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        pods = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        records = Ctr(c.address, NS)("containers", "ls").stdout
        c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        pod_stopped = c.pod_status(pod_id).status
        c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        after = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        seen[name] = {"pod": pod_id, "status": status, "cid": cid, "running": running,
                      "exec": exec_out, "stopped": stopped, "listed": listed, "pods": pods,
                      "records": records, "pod_stopped": pod_stopped, "after": after,
                      "log": _log_lines(logs[name] / "app.log")}
    ours, theirs = seen["berthd"], seen["containerd"]

    # The pod: ready, with an address on its own network, the config echoed back.
    for s, subnet in ((ours, "10.203.0."), (theirs, "10.204.0.")):
        st = s["status"].status
        assert st.state == pb.SANDBOX_READY
        assert st.network.ip.startswith(subnet)
        assert st.metadata.name == "web" and dict(st.labels) == {"app": "web"}
        assert s["pod_stopped"].state == pb.SANDBOX_NOTREADY
        assert s["pod_stopped"].network.ip == ""
        assert s["after"] == []
    assert set(json.loads(ours["status"].info["info"])) == \
        set(json.loads(theirs["status"].info["info"]))

    # The container: same states, exit codes, reasons, and the same output.
    assert ours["running"].status.state == theirs["running"].status.state == \
        pb.CONTAINER_RUNNING
    assert (ours["stopped"].state, ours["stopped"].exit_code, ours["stopped"].reason) == \
        (theirs["stopped"].state, theirs["stopped"].exit_code, theirs["stopped"].reason) == \
        (pb.CONTAINER_EXITED, 143, "Error")
    assert ours["running"].status.image_ref == theirs["running"].status.image_ref
    assert set(json.loads(ours["running"].info["info"])) == \
        set(json.loads(theirs["running"].info["info"]))
    assert ours["exec"].exit_code == theirs["exec"].exit_code == 3
    assert ours["exec"].stdout == theirs["exec"].stdout
    assert ours["exec"].stdout.decode().splitlines()[:3] == [
        "uid=0(root) gid=0(root) groups=0(root)", "V web", "/tmp"]
    # Each stream's records in order (the two streams interleave as they come).
    # An unterminated last line is a partial record at EOF, as containerd writes it.
    for stream, want in (("stdout", [("F", "out"), ("P", "partial")]), ("stderr", [("F", "err")])):
        for s in (ours, theirs):
            assert [(t, m) for st, t, m in s["log"] if st == stream] == want, s["log"]
    for s in (ours, theirs):
        assert [c.metadata.name for c in s["listed"]] == ["app"]
        assert [p.metadata.name for p in s["pods"]] == ["web"]

    # The records ctr sees: the same images and runtimes, labelled by kind.
    def rows(text: str) -> list[tuple[str, str]]:
        return sorted((line.split()[1].rsplit("/", 1)[-1], line.split()[2])
                      for line in text.splitlines()[1:] if line.strip())

    assert rows(ours["records"]) == rows(theirs["records"])


def test_errors_for_unknown_ids(daemons: dict[str, CRI]) -> None:
    nope = "0" * 64
    for call in ("ContainerStatus", "StopContainer", "PodSandboxStatus", "StopPodSandbox"):
        answers = {}
        for name, c in daemons.items():
            stub = getattr(c.runtime, call)
            req = {"ContainerStatus": pb.ContainerStatusRequest(container_id=nope),
                   "StopContainer": pb.StopContainerRequest(container_id=nope),
                   "PodSandboxStatus": pb.PodSandboxStatusRequest(pod_sandbox_id=nope),
                   "StopPodSandbox": pb.StopPodSandboxRequest(pod_sandbox_id=nope)}[call]
            answers[name] = _code(lambda stub=stub, req=req: stub(req, timeout=10))[0]
        assert answers["berthd"] == answers["containerd"] == grpc.StatusCode.NOT_FOUND, call
    for c in daemons.values():
        c.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=nope), timeout=10)
        c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=nope), timeout=10)


def test_bad_input(daemons: dict[str, CRI], logs: dict[str, Path],
                   busybox_image: ImageInfo, tmp_path: Path) -> None:
    bad_profile = tmp_path / "bad-seccomp.json"
    bad_profile.write_text("{not json")
    codes: dict[str, dict[str, grpc.StatusCode]] = {}
    for name, c in daemons.items():
        pod = pod_config("bad", logs[name])
        pod_id = c.run_pod(pod)
        got = codes[name] = {}
        got["missing image"] = _code(lambda c=c, pod_id=pod_id, pod=pod: c.create(
            pod_id, container_config("x", "127.0.0.1:1/no/such:image", "true"), pod))[0]
        seccomp = container_config("sc", busybox_image.ref, "true")
        seccomp.linux.security_context.seccomp_profile_path = f"localhost/{bad_profile}"
        got["bad seccomp"] = _code(lambda c=c, pod_id=pod_id, pod=pod, s=seccomp: c.create(
            pod_id, s, pod))[0]
        # This kernel has no AppArmor: asking for a profile fails on both, never dropped.
        for label, field, value in (
                ("apparmor default", "apparmor",
                 pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)),
                ("apparmor localhost", "apparmor",
                 pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                    localhost_ref="berth-test")),
                ("apparmor old field", "apparmor_profile", "runtime/default")):
            confined = container_config("aa", busybox_image.ref, "true")
            if isinstance(value, str):
                confined.linux.security_context.apparmor_profile = value
            else:
                getattr(confined.linux.security_context, field).CopyFrom(value)
            got[label] = _code(lambda c=c, pod_id=pod_id, pod=pod, s=confined: c.create(
                pod_id, s, pod))[0]
        unconfined = container_config("unconfined", busybox_image.ref, "true")
        unconfined.linux.security_context.apparmor.profile_type = pb.SecurityProfile.Unconfined
        c.create(pod_id, unconfined, pod)  # no profile asked for: fine anywhere
        cid = c.run(pod_id, container_config("done", busybox_image.ref, "true"), pod)
        assert c.wait_exited(cid).exit_code == 0
        got["start twice"] = _code(lambda c=c, cid=cid: c.start(cid))[0]
        got["exec exited"] = _code(lambda c=c, cid=cid: c.exec_sync(cid, "true"))[0]
        c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        got["container in stopped pod"] = _code(lambda c=c, pod_id=pod_id, pod=pod: c.create(
            pod_id, container_config("late", busybox_image.ref, "true"), pod))[0]
        c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=60)
    assert codes["berthd"] == codes["containerd"]


def _spec(c: CRI, record_id: str) -> dict[str, Any]:
    info = json.loads(Ctr(c.address, NS)("containers", "info", record_id).stdout)
    return dict(info["Spec"])


def _normal_spec(spec: dict[str, Any], ids: dict[str, str], pid: int) -> Any:
    """A spec with what differs by daemon and run replaced: ids, the daemons' directories, the
    sandbox's pid, the netns name."""
    text = json.dumps(spec, sort_keys=True)
    for old, new in ids.items():
        text = text.replace(old, new)
    text = re.sub(r'"/[^"]*?/io\.containerd\.grpc\.v1\.cri/(sandboxes|containers)/', r'"CRI/\1/',
                  text)
    text = text.replace(f"/proc/{pid}/ns/", "/proc/PID/ns/")
    text = re.sub(r"/var/run/netns/cni-[0-9a-f-]+", "NETNS", text)
    return json.loads(text)


def _security(**settings: Any) -> Any:
    def change(pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig, tmp: Path) -> None:
        ctx = cfg.linux.security_context
        for key, value in settings.items():
            if key == "capabilities":
                ctx.capabilities.add_capabilities.extend(value.get("add_capabilities", []))
                ctx.capabilities.drop_capabilities.extend(value.get("drop_capabilities", []))
            elif key == "run_as_user":
                ctx.run_as_user.value = value
            elif key in ("masked_paths", "readonly_paths", "supplemental_groups"):
                getattr(ctx, key).extend(value)
            else:
                setattr(ctx, key, value)
    return change


def _privileged(pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig, tmp: Path) -> None:
    pod.linux.security_context.privileged = True
    cfg.linux.security_context.privileged = True


def _host_namespaces(pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig, tmp: Path) -> None:
    options = pod.linux.security_context.namespace_options
    options.network, options.ipc, options.pid = pb.NODE, pb.NODE, pb.NODE
    pod.hostname = ""  # the kubelet sends none with the host's network
    pod.linux.sysctls.clear()
    cfg.linux.security_context.namespace_options.pid = pb.NODE


def _own_pid(pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig, tmp: Path) -> None:
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER


def _resources_and_mounts(pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig, tmp: Path) -> None:
    pod.linux.cgroup_parent = "/berthtest-specs"
    r = cfg.linux.resources
    r.cpu_period, r.cpu_quota, r.cpu_shares = 100000, 50000, 512
    r.memory_limit_in_bytes, r.oom_score_adj = 64 << 20, 500
    for i, prop in enumerate((pb.PROPAGATION_PRIVATE, pb.PROPAGATION_PRIVATE)):
        host = tmp / f"vol{i}"
        host.mkdir(exist_ok=True)
        cfg.mounts.append(pb.Mount(container_path=f"/data/v{i}", host_path=str(host),
                                   readonly=i == 1, propagation=prop))
    cfg.devices.append(pb.Device(container_path="/dev/mynull", host_path="/dev/null",
                                 permissions="rw"))


SPEC_CASES = {
    "default": _security(),
    "restricted": _security(run_as_user=1000, readonly_rootfs=True, no_new_privs=True,
                            seccomp_profile_path="runtime/default",
                            capabilities={"add_capabilities": ["NET_ADMIN"],
                                          "drop_capabilities": ["CHOWN", "KILL"]},
                            supplemental_groups=[1234]),
    "drop-all": _security(capabilities={"drop_capabilities": ["ALL"]},
                          run_as_username="nobody"),
    "paths": _security(masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"]),
    "privileged": _privileged,
    "host-namespaces": _host_namespaces,
    "own-pid": _own_pid,
    "resources-mounts-devices": _resources_and_mounts,
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_specs_match_containerd(daemons: dict[str, CRI], logs: dict[str, Path],
                                busybox_image: ImageInfo, case: str, tmp_path: Path) -> None:
    """The OCI specs each daemon gives the runtime, for a pod and a container, are the same
    once ids and directories are set aside."""
    specs = {}
    for name, c in daemons.items():
        pod = pod_config("specs", logs["berthd"], labels={"l": "1"}, annotations={"a": "1"},
                         port_mappings=[pb.PortMapping(container_port=80)])
        pod.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
        cfg = container_config("spec", busybox_image.ref, "sleep 1000",
                               envs=[pb.KeyValue(key="A", value="b")])
        SPEC_CASES[case](pod, cfg, tmp_path)
        pod_id = c.run_pod(pod)
        try:
            cid = c.create(pod_id, cfg, pod)
            pid = json.loads(c.pod_status(pod_id, verbose=True).info["info"])["pid"]
            ids = {pod_id: "POD", cid: "CONTAINER"}
            specs[name] = (_normal_spec(_spec(c, pod_id), ids, pid),
                           _normal_spec(_spec(c, cid), ids, pid))
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    for ours, theirs, what in zip(specs["berthd"], specs["containerd"], ("pod", "container"),
                                  strict=True):
        for key in sorted(set(ours) | set(theirs)):
            assert ours.get(key) == theirs.get(key), (what, key)


def _fields(msg: Any, prefix: str = "") -> set[str]:
    """The paths of the fields set in a message (repeated ones by their first element)."""
    out = set()
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        out.add(path)
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.is_repeated:
                if len(value):
                    out |= _fields(value[0], path + "[].")
            else:
                out |= _fields(value, path + ".")
    return out


def test_stats(daemons: dict[str, CRI], logs: dict[str, Path], busybox_image: ImageInfo) -> None:
    """The four stats calls: the same fields present on both daemons, and plausible numbers."""
    answers = {}
    for name, c in daemons.items():
        pod = pod_config("stats", logs[name], labels={"s": "1"})
        pod.linux.cgroup_parent = f"/berthtest-stats-{name}"
        pod_id = c.run_pod(pod)
        try:
            cid = c.run(pod_id, container_config("busy", busybox_image.ref,
                                                 "head -c 3000000 /dev/zero > /dev/null; "
                                                 "exec sleep 1000"), pod)
            rt = c.runtime
            answers[name] = {
                "container": rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid),
                                               timeout=30).stats,
                "list": rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=30).stats,
                "pod": rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id),
                                          timeout=30).stats,
                "pods": rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(),
                                               timeout=30).stats,
            }
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    ours, theirs = answers["berthd"], answers["containerd"]

    def shape(msg: Any) -> set[str]:
        # Values aside (zero is "unset" in proto3); containerd fills the writable layer's
        # usage only from a collector that runs every 10 s, Berth measures it when asked.
        return {f for f in _fields(msg) if not f.endswith(".value")
                and not f.endswith("writable_layer.timestamp")}

    assert shape(ours["container"]) == shape(theirs["container"])
    assert shape(ours["pod"]) == shape(theirs["pod"])
    assert len(ours["list"]) == len(theirs["list"]) == 1
    assert len(ours["pods"]) == len(theirs["pods"]) == 1
    stats = ours["container"]
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.usage_bytes.value > 0 and stats.memory.working_set_bytes.value > 0
    assert stats.attributes.metadata.name == "busy"
    pod_stats = ours["pod"].linux
    assert pod_stats.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
    assert pod_stats.network.default_interface.name == "eth0"
    assert [s.attributes.id for s in pod_stats.containers] == [stats.attributes.id]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_exec_sync_timeout_and_cap(daemons: dict[str, CRI], logs: dict[str, Path],
                                   busybox_image: ImageInfo) -> None:
    """ExecSync: output and exit code of a command; a command that outlives its timeout is
    killed (DEADLINE_EXCEEDED); output over 16 MiB is never held (CVE-2022-31030: berthd's
    memory does not grow with it), and, as with containerd, an answer over gRPC's 16 MiB
    message limit is RESOURCE_EXHAUSTED."""
    seen = {}
    for name, c in daemons.items():
        pod = pod_config("execs", logs[name])
        pod_id = c.run_pod(pod)
        try:
            cid = c.run(pod_id, container_config("t", busybox_image.ref, "exec sleep 1000"),
                        pod)
            small = c.exec_sync(cid, "sh", "-c", "head -c 1000000 /dev/zero; "
                                "head -c 100 /dev/zero >&2; exit 4", timeout=60)
            timed_out = _code(lambda c=c, cid=cid: c.exec_sync(cid, "sleep", "30",
                                                               timeout=1))[0]
            left = c.exec_sync(cid, "sh", "-c", "ps -o args | grep -c '^sleep 30' || true")
            peak = _peak_rss_kib(c.pid)
            huge = _code(lambda c=c, cid=cid: c.exec_sync(
                cid, "sh", "-c", "head -c 200000000 /dev/zero", timeout=60))[0]
            grew = _peak_rss_kib(c.pid) - peak
            seen[name] = (len(small.stdout), len(small.stderr), small.exit_code, timed_out,
                          left.stdout.strip(), huge)
            if name == "berthd":
                # 16 MiB kept, its copy into the answer and the serialized message: bounded,
                # far below the 200 MB the command wrote.
                assert grew < 80 << 10, f"berthd's peak RSS grew by {grew} KiB"
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    assert seen["berthd"] == seen["containerd"] == (
        1000000, 100, 4, grpc.StatusCode.DEADLINE_EXCEEDED, b"0",
        grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_update_resources_and_reopen_log(daemons: dict[str, CRI], logs: dict[str, Path],
                                         busybox_image: ImageInfo) -> None:
    seen = {}
    for name, c in daemons.items():
        pod = pod_config("upd", logs[name])
        pod_id = c.run_pod(pod)
        try:
            cid = c.run(pod_id, container_config(
                "tick", busybox_image.ref, "while true; do echo tick; sleep 0.05; done"), pod)
            c.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
                container_id=cid, linux=pb.LinuxContainerResources(
                    memory_limit_in_bytes=96 << 20, cpu_shares=256)), timeout=30)
            limit = c.exec_sync(cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                "/sys/fs/cgroup/cpu/cpu.shares").stdout.split()
            log = logs[name] / "tick.log"
            log.rename(logs[name] / "tick.log.1")
            c.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid),
                                         timeout=30)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not log.exists() or
                                                   "tick" not in log.read_text()):
                time.sleep(0.05)
            reopened = log.exists() and "stdout F tick" in log.read_text()
            c.stop(cid)
            code = _code(lambda c=c, cid=cid: c.runtime.ReopenContainerLog(
                pb.ReopenContainerLogRequest(container_id=cid), timeout=30))[0]
            seen[name] = (limit, reopened, code)
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    assert seen["berthd"] == seen["containerd"]
    assert seen["berthd"][:2] == ([str(96 << 20).encode(), b"256"], True)


def test_log_directory(daemons: dict[str, CRI], tmp_path: Path,
                       busybox_image: ImageInfo) -> None:
    """A missing log directory is made (as containerd makes it); a log path that cannot be a
    file (its directory is a regular file) fails the start on both, nothing left running."""
    seen = {}
    for name, c in daemons.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("not a directory\n")
        made = pod_config("mkdir", tmp_path / name / "made" / "here")
        bad = pod_config("badlog", tmp_path / name / "file")
        ids = [c.run_pod(made), c.run_pod(bad)]
        try:
            cid = c.run(ids[0], container_config("x", busybox_image.ref, "echo made"), made)
            ok = c.wait_exited(cid).exit_code
            written = (tmp_path / name / "made" / "here" / "x.log").read_text().split(" ")[-1]
            cid = c.create(ids[1], container_config("x", busybox_image.ref, "true"), bad)
            code = _code(lambda c=c, cid=cid: c.start(cid))[0]
            state = c.container_status(cid).status.state
            seen[name] = (ok, written, code, state)
        finally:
            for pod_id in ids:
                c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                           timeout=60)
    assert seen["berthd"] == seen["containerd"]
    assert seen["berthd"][:2] == (0, "made\n")


def test_log_path_stays_in_the_log_directory(daemons: dict[str, CRI], tmp_path: Path,
                                             busybox_image: ImageInfo) -> None:
    """An absolute log_path is joined under the pod's log directory on both daemons (as Go's
    filepath.Join does), never used as is. A log_path that climbs out with '..' is refused by
    berthd at create (InvalidArgument); containerd's lexical join lets it out, which is the
    weaker behaviour berthd does not copy."""
    seen = {}
    for name, c in daemons.items():
        logs = tmp_path / name / "pod"
        logs.mkdir(parents=True)
        victim = tmp_path / name / "victim.log"
        pod = pod_config("logpath", logs)
        pod_id = c.run_pod(pod)
        try:
            cfg = container_config("abs", busybox_image.ref, "echo inside")
            cfg.log_path = str(victim)
            cid = c.run(pod_id, cfg, pod)
            code = c.wait_exited(cid).exit_code
            inside = logs / str(victim).lstrip("/")
            written = inside.read_text().split(" ")[-1] if inside.exists() else None
            seen[name] = (code, written, victim.exists())
            climbing = container_config("up", busybox_image.ref, "echo out")
            climbing.log_path = "../escaped.log"
            if name == "berthd":
                assert _code(lambda c=c, pod_id=pod_id, pod=pod, cfg=climbing: c.create(
                    pod_id, cfg, pod))[0] == grpc.StatusCode.INVALID_ARGUMENT
                assert not (tmp_path / name / "escaped.log").exists()
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    assert seen["berthd"] == seen["containerd"] == (0, "inside\n", False)


def test_oom_killed(daemons: dict[str, CRI], logs: dict[str, Path],
                    busybox_image: ImageInfo) -> None:
    seen = {}
    for name, c in daemons.items():
        pod = pod_config("oom", logs[name])
        pod_id = c.run_pod(pod)
        try:
            cfg = container_config("hog", busybox_image.ref, "tail /dev/zero")
            cfg.linux.resources.memory_limit_in_bytes = 16 << 20
            cid = c.run(pod_id, cfg, pod)
            st = c.wait_exited(cid, within=60)
            seen[name] = (st.state, st.exit_code, st.reason)
        finally:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=60)
    assert seen["berthd"] == seen["containerd"] == (pb.CONTAINER_EXITED, 137, "OOMKilled")


def test_list_filters(daemons: dict[str, CRI], logs: dict[str, Path],
                      busybox_image: ImageInfo) -> None:
    """ListPodSandbox and ListContainers with each filter answer alike."""
    answers: dict[str, list[Any]] = {}
    for name, c in daemons.items():
        pods = {}
        for pod_name, tier in (("f1", "a"), ("f2", "b")):
            cfg = pod_config(pod_name, logs[name], labels={"tier": tier})
            pods[pod_name] = (c.run_pod(cfg), cfg)
        ids = {}
        for pod_name, (pod_id, cfg) in pods.items():
            for cname, script in (("run", "exec sleep 1000"), ("done", "true")):
                ids[pod_name, cname] = c.run(pod_id, container_config(
                    cname, busybox_image.ref, script, labels={"c": cname}), cfg)
        c.wait_exited(ids["f1", "done"])
        c.wait_exited(ids["f2", "done"])
        c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pods["f2"][0]),
                                 timeout=60)
        rt = c.runtime
        f1 = pods["f1"][0]

        def containers(flt: pb.ContainerFilter, rt: Any = rt, f1: str = f1
                       ) -> list[tuple[str, str]]:
            got = rt.ListContainers(pb.ListContainersRequest(filter=flt), timeout=10).containers
            return sorted((x.metadata.name, "f1" if x.pod_sandbox_id == f1 else "f2")
                          for x in got)

        def sandboxes(flt: pb.PodSandboxFilter, rt: Any = rt) -> list[str]:
            got = rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt), timeout=10).items
            return sorted(x.metadata.name for x in got)

        answers[name] = [
            containers(pb.ContainerFilter()),
            containers(pb.ContainerFilter(id=ids["f1", "run"])),
            containers(pb.ContainerFilter(id=ids["f1", "run"][:12])),
            containers(pb.ContainerFilter(pod_sandbox_id=f1)),
            containers(pb.ContainerFilter(state=pb.ContainerStateValue(
                state=pb.CONTAINER_RUNNING))),
            containers(pb.ContainerFilter(state=pb.ContainerStateValue(
                state=pb.CONTAINER_EXITED))),
            containers(pb.ContainerFilter(label_selector={"c": "done"})),
            containers(pb.ContainerFilter(pod_sandbox_id=f1, label_selector={"c": "run"})),
            sandboxes(pb.PodSandboxFilter()),
            sandboxes(pb.PodSandboxFilter(id=f1)),
            sandboxes(pb.PodSandboxFilter(state=pb.PodSandboxStateValue(
                state=pb.SANDBOX_READY))),
            sandboxes(pb.PodSandboxFilter(label_selector={"tier": "b"})),
        ]
        for pod_id, _ in pods.values():
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert answers["berthd"] == answers["containerd"]
    assert answers["berthd"][4] == [("run", "f1")]  # f2's were stopped with their pod
