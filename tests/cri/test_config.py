"""The CRI plugin's configuration: containerd 1.6.20's keys and defaults, unknown keys reported
(berthd warns about each), wrong types refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_root
from daemon import Berthd

from berth import errdefs
from berth.cri import config


def test_defaults_are_containerds() -> None:
    c = config.load({})
    assert c.sandbox_image == "registry.k8s.io/pause:3.6"
    assert c.max_container_log_line_size == 16384
    assert not c.restrict_oom_score_adj and not c.disable_cgroup
    assert c.cni_bin_dirs == ("/opt/cni/bin",) and c.cni_conf_dir == "/etc/cni/net.d"
    assert c.cni_max_conf_num == 1
    assert c.snapshotter == "overlayfs" and c.default_runtime_name == "runc"
    assert c.handler("").runtime_type == "io.containerd.runc.v2"
    assert c.unknown == () and c.ignored == ()


def test_runtimes_and_handlers() -> None:
    c = config.load({"containerd": {"default_runtime_name": "fast", "runtimes": {
        "fast": {"runtime_type": "io.containerd.berth.v2", "pod_annotations": ["a/*"]},
        "go": {"runtime_type": "io.containerd.runc.v2",
               "runtime_path": "/usr/bin/containerd-shim-runc-v2"}}}})
    assert c.handler("").name == "fast"
    assert c.handler("fast").pod_annotations == ("a/*",)
    assert c.handler("go").runtime_path == "/usr/bin/containerd-shim-runc-v2"
    assert c.handler("runc").runtime_type == "io.containerd.runc.v2"  # always there
    with pytest.raises(errdefs.NotFound, match="no runtime for 'nosuch'"):
        c.handler("nosuch")


def test_unknown_and_ignored_keys() -> None:
    c = config.load({"sandbox_imag": "typo", "selinux_category_range": 1024,
                     "cni": {"bin_dirr": "/x"},
                     "containerd": {"runtimes": {"runc": {"runtime_tyep": "x"}}}})
    assert set(c.unknown) == {"sandbox_imag", "cni.bin_dirr",
                              "containerd.runtimes.runc.runtime_tyep"}
    assert c.ignored == ("selinux_category_range",)
    assert config.load({"stream_server_port": "10010"}).stream_server_port == 10010
    with pytest.raises(errdefs.InvalidArgument, match="stream_server_port"):
        config.load({"stream_server_port": "http"})


@pytest.mark.parametrize(("table", "message"), [
    ({"sandbox_image": 3}, "sandbox_image must be a str"),
    ({"restrict_oom_score_adj": "yes"}, "restrict_oom_score_adj must be a bool"),
    ({"max_container_log_line_size": 0}, "max_container_log_line_size must be positive"),
    ({"max_container_log_line_size": True}, "max_container_log_line_size must be a number"),
    ({"cni": []}, "cni must be a table"),
    ({"cni": {"bin_dir": [1]}}, "cni.bin_dir must be a list of strings"),
    ({"containerd": {"default_runtime_name": "nope"}}, "names no"),
])
def test_bad_values(table: dict[str, object], message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        config.load(table)


def test_berthd_warns_about_unknown_keys(tmp_path: Path) -> None:
    require_root()
    conf = tmp_path / "config.toml"
    conf.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                    '  sandbox_imag = "typo"\n'
                    f'  [plugins."io.containerd.grpc.v1.cri".cni]\n    conf_dir = "{tmp_path}"\n')
    with Berthd(tmp_path / "berthd", config=str(conf)) as daemon:
        log = daemon.log()
    assert "unknown key 'sandbox_imag'" in log


def test_streaming_tls_and_address() -> None:
    """The streaming key pair is checked as containerd checks it; without a key pair TLS is
    refused rather than served as plain HTTP (containerd would make a self-signed certificate);
    an empty address is refused rather than guessed."""
    pair = {"tls_cert_file": "/etc/c.pem", "tls_key_file": "/etc/k.pem"}
    assert config.load({}).stream_tls is None
    assert config.load({"enable_tls_streaming": True, "x509_key_pair_streaming": pair}
                       ).stream_tls == ("/etc/c.pem", "/etc/k.pem")
    for table, words in [
        ({"enable_tls_streaming": True}, "does not make a self-signed certificate"),
        ({"enable_tls_streaming": True, "x509_key_pair_streaming": {"tls_cert_file": "/c"}},
         "needs x509_key_pair_streaming.tls_key_file"),
        ({"enable_tls_streaming": True, "x509_key_pair_streaming": {"tls_key_file": "/k"}},
         "needs x509_key_pair_streaming.tls_cert_file"),
        ({"x509_key_pair_streaming": pair}, "enable_tls_streaming is not"),
        ({"stream_server_address": ""}, "stream_server_address must name the address"),
    ]:
        with pytest.raises(errdefs.InvalidArgument, match=words):
            config.load(table)
    c = config.load({"enable_tls_streaming": True,
                     "x509_key_pair_streaming": {**pair, "tls_ca_file": "x"}})
    assert c.unknown == ("x509_key_pair_streaming.tls_ca_file",)


@pytest.mark.parametrize(("value", "seconds"), [
    ("4h0m0s", 4 * 3600.0), ("90s", 90.0), ("1.5h", 5400.0), ("1h30m", 5400.0),
    ("500ms", 0.5), ("0", 0.0), ("0s", 0.0), ("2m3.5s", 123.5), (".5s", 0.5), ("+5s", 5.0),
    ("", 4 * 3600.0),  # containerd parses only a value that is not empty
])
def test_stream_idle_timeout(value: str, seconds: float) -> None:
    """containerd's Go durations; its default is 4 h, and 0 turns the limit off."""
    assert config.load({}).stream_idle_timeout == 4 * 3600.0
    assert config.load({"stream_idle_timeout": value}).stream_idle_timeout == \
        pytest.approx(seconds)


@pytest.mark.parametrize("value", ["4 hours", "10", "-1s", "1d", "h", 30, "1h 30m", "+",
                                   "\u0663s"])
def test_stream_idle_timeout_that_is_no_duration(value: object) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=r"stream_idle_timeout .* is not a duration"):
        config.load({"stream_idle_timeout": value})
