"""Platforms (``os/arch[/variant]``) and choosing one from an image index, as containerd does."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from berth import errdefs

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}
_ARM_VARIANT = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8", "arm64": "v8"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


def host() -> Platform:
    machine = _platform.machine()
    arch = _ARCH.get(machine, machine)
    variant = _ARM_VARIANT.get(machine, "") if arch in ("arm", "arm64") else ""
    return Platform("linux", arch, variant)


def parse(spec: str) -> Platform:
    """``linux/amd64``, ``linux/arm64/v8``, ``amd64`` (the host OS assumed)."""
    parts = [p.strip().lower() for p in spec.split("/")]
    if not spec or any(not p for p in parts) or len(parts) > 3:
        raise errdefs.InvalidArgument(
            f"invalid platform {spec!r}: use os/arch[/variant], e.g. linux/amd64")
    if len(parts) == 1:
        return Platform("linux", _ARCH.get(parts[0], parts[0]))
    arch = _ARCH.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    return Platform(parts[0], arch, variant)


def matches(want: Platform, have: Platform) -> bool:
    """Whether an image for ``have`` runs on ``want`` (arm64 ignores the v8 default variant)."""
    if want.os != have.os or want.architecture != have.architecture:
        return False
    if not want.variant or not have.variant:
        return True
    return want.variant == have.variant


def from_json(value: object) -> Platform | None:
    if not isinstance(value, dict):
        return None
    return Platform(str(value.get("os", "")), str(value.get("architecture", "")),
                    str(value.get("variant", "")))
