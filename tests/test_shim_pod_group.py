"""A task joins its pod's shim by the pod annotation in its spec (containerd's
``io.kubernetes.cri.sandbox-id`` or ``io.containerd.runc.v2.group``): the value names a bundle
of the same namespace, never a path elsewhere. A value such as ``../other/<id>`` would have
made a task of one namespace join (and publish its events through) another namespace's shim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.shimcontract import ADDRESS_FILE
from berth.shimgroups import POD_LABELS, group_address


def _bundle(root: Path, task_id: str, pod: str) -> Path:
    bundle = root / task_id
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"annotations": {POD_LABELS[0]: pod}}))
    return bundle


@pytest.mark.parametrize("pod", ["../other/sandbox", "/abs/sandbox", "a/b", ".."])
def test_a_pod_annotation_that_is_not_an_id_joins_no_other_shim(tmp_path: Path,
                                                                pod: str) -> None:
    other = tmp_path / "other" / "sandbox"
    other.mkdir(parents=True)
    (other / ADDRESS_FILE).write_text("unix:///run/other-namespace-shim")
    bundle = _bundle(tmp_path / "mine", "task", pod)
    address = group_address("task", str(bundle), "/run/berth/berth.sock", "mine", False,
                            group_size=16)
    assert "other-namespace-shim" not in address


def test_a_pod_annotation_joins_its_sandbox_shim(tmp_path: Path) -> None:
    sandbox = tmp_path / "mine" / "sandbox"
    sandbox.mkdir(parents=True)
    (sandbox / ADDRESS_FILE).write_text("unix:///run/pod-shim")
    bundle = _bundle(tmp_path / "mine", "task", "sandbox")
    assert group_address("task", str(bundle), "/run/berth/berth.sock", "mine", False,
                         group_size=16) == "unix:///run/pod-shim"
