"""AppArmor for CRI containers, as containerd 1.6 decides it (berth.cri.spec.apparmor_profile).

This machine's kernel has no AppArmor, so the host without it is also covered end to end against
containerd (tests/cri/test_pods.py::test_bad_input). The host that enforces it is covered here
with a profiles list written for the test: a profile is never silently dropped, a localhost
profile must be loaded, and where containerd would apply its own default profile Berth (which has
none) refuses rather than run the container unconfined.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from berth import errdefs
from berth.api.cri.runtime.v1 import api_pb2 as pb
from berth.cri.spec import apparmor_profile

SP = pb.SecurityProfile


def context(*, field: SP | None = None, old: str = "",
            privileged: bool = False) -> pb.LinuxContainerSecurityContext:
    security = pb.LinuxContainerSecurityContext(privileged=privileged, apparmor_profile=old)
    if field is not None:
        security.apparmor.CopyFrom(field)
    return security


@pytest.fixture
def loaded(tmp_path: Path) -> str:
    profiles = tmp_path / "profiles"
    profiles.write_text("berth-web (enforce)\n/usr/bin/man (complain)\n")
    return str(profiles)


def test_without_apparmor_only_unconfined_is_accepted() -> None:
    assert apparmor_profile(context(), enabled=False) is None
    assert apparmor_profile(context(old="unconfined"), enabled=False) is None
    assert apparmor_profile(context(field=SP(profile_type=SP.Unconfined)), enabled=False) is None
    for asked in (context(field=SP(profile_type=SP.RuntimeDefault)),
                  context(field=SP(profile_type=SP.Localhost, localhost_ref="berth-web")),
                  context(old="runtime/default"), context(old="localhost/berth-web")):
        with pytest.raises(errdefs.Unknown, match="apparmor is not supported"):
            apparmor_profile(asked, enabled=False)


def test_with_apparmor_a_loaded_localhost_profile_is_applied(loaded: str) -> None:
    for asked in (context(field=SP(profile_type=SP.Localhost, localhost_ref="berth-web")),
                  context(old="localhost/berth-web")):
        assert apparmor_profile(asked, enabled=True, loaded=loaded) == "berth-web"
    assert apparmor_profile(context(old="localhost//usr/bin/man"), enabled=True,
                            loaded=loaded) == "/usr/bin/man"
    with pytest.raises(errdefs.Unknown, match="apparmor profile not found 'missing'"):
        apparmor_profile(context(old="localhost/missing"), enabled=True, loaded=loaded)
    with pytest.raises(errdefs.Unknown, match="invalid apparmor profile"):
        apparmor_profile(context(old="docker-default"), enabled=True, loaded=loaded)


def test_with_apparmor_the_default_is_refused_not_dropped(loaded: str) -> None:
    with pytest.raises(errdefs.Unknown, match="disable_apparmor = true"):
        apparmor_profile(context(), enabled=True, loaded=loaded)
    for asked in (context(field=SP(profile_type=SP.RuntimeDefault)),
                  context(old="runtime/default")):
        with pytest.raises(errdefs.Unknown, match="no runtime/default profile"):
            apparmor_profile(asked, enabled=True, loaded=loaded)
    assert apparmor_profile(context(old="unconfined"), enabled=True, loaded=loaded) is None


def test_privileged_containers_get_no_default_but_what_they_ask_for(loaded: str) -> None:
    """As containerd: no default profile for a privileged container, but a localhost profile
    it asks for is applied all the same."""
    assert apparmor_profile(context(privileged=True), enabled=True, loaded=loaded) is None
    assert apparmor_profile(context(old="runtime/default", privileged=True), enabled=True,
                            loaded=loaded) is None
    assert apparmor_profile(context(old="localhost/berth-web", privileged=True), enabled=True,
                            loaded=loaded) == "berth-web"
