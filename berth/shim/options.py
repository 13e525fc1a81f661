"""A task's runtime options: which OCI runtime, with which state root.

They come with Create as a ``containerd.runc.v1.Options`` (runc binary, state root, systemd
cgroups, no-pivot...) and are saved in the bundle (``options.json``), so that the ``delete``
action, run after the shim died, drives the same runtime with the same root. (No asyncio here:
``delete`` must start fast.)
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from berth import errdefs
from berth.shim.runc import Runc

if TYPE_CHECKING:
    from google.protobuf import any_pb2

OPTIONS_FILE = "options.json"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"


class RuntimeOptions:
    """(A plain class: importing dataclasses would cost the delete action 7 ms.)"""

    FIELDS = ("binary_name", "root", "systemd_cgroup", "no_pivot_root", "no_new_keyring")

    def __init__(self, binary_name: str = "", root: str = "", systemd_cgroup: bool = False,
                 no_pivot_root: bool = False, no_new_keyring: bool = False) -> None:
        self.binary_name = binary_name
        self.root = root
        self.systemd_cgroup = systemd_cgroup
        self.no_pivot_root = no_pivot_root
        self.no_new_keyring = no_new_keyring

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuntimeOptions) and all(
            getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self.FIELDS))

    @classmethod
    def from_any(cls, options: any_pb2.Any) -> RuntimeOptions:
        """From a task's ``options`` (an ``Any``); defaults when unset. Another type of
        options is refused, as it would be silently ignored otherwise."""
        if not options.type_url and not options.value:
            return cls()
        type_name = options.type_url.rsplit("/", 1)[-1]
        if type_name != RUNC_OPTIONS_TYPE:
            raise errdefs.InvalidArgument(
                f"unsupported task options type {options.type_url!r}: the berth shim takes "
                f"{RUNC_OPTIONS_TYPE}")
        from berth.api.runtime.runc.options import oci_pb2

        parsed = oci_pb2.Options.FromString(options.value)
        return cls(parsed.binary_name, parsed.root, parsed.systemd_cgroup,
                   parsed.no_pivot_root, parsed.no_new_keyring)

    def save(self, bundle: str) -> None:
        tmp = os.path.join(bundle, f".{OPTIONS_FILE}")
        with open(tmp, "w") as f:
            json.dump({f: getattr(self, f) for f in self.FIELDS}, f)
        os.replace(tmp, os.path.join(bundle, OPTIONS_FILE))

    @classmethod
    def load(cls, bundle: str) -> RuntimeOptions:
        try:
            with open(os.path.join(bundle, OPTIONS_FILE)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(**{k: v for k, v in data.items() if k in cls.FIELDS})

    def runc(self, bundle: str, namespace: str) -> Runc:
        return Runc.for_bundle(bundle, namespace, binary=self.binary_name, root=self.root,
                               systemd_cgroup=self.systemd_cgroup)
