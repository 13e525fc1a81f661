"""berthd loads what a feature needs only when the feature is used: an idle daemon (or one
that only runs containers) does not carry the HTTP stack, prometheus_client, the layer codecs
(isal, zstandard) or RE2 (for ``~=`` filters). A subprocess
imports what berthd imports at start-up and reports which heavy modules came with it."""

from __future__ import annotations

import json
import subprocess
import sys

# (ssl is not among them: asyncio, which gRPC and ttrpc need, imports it.)
HEAVY = ("urllib3", "http.client", "email", "prometheus_client", "re2", "isal", "zstandard")


def loaded_after(code: str) -> set[str]:
    script = (f"import sys, json\n{code}\n"
              f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_startup_imports_leave_out_the_http_stack_and_metrics() -> None:
    # The modules berthd's plugins import when they are built (builtins.registry()), the
    # services over them and the CRI plugin.
    code = ("import berth.daemon, berth.builtins, berth.services.transfer, berth.cri.service, "
            "berth.cri.images, berth.transfer\n"
            "from berth.remotes.remotes import Resolver\n"
            "from berth.remotes import reference")
    assert loaded_after(code) == set()


def test_the_http_stack_comes_with_the_first_resolver() -> None:
    assert "urllib3" in loaded_after("from berth.remotes import RegistryResolver")


def test_lazy_names_are_the_modules_own() -> None:
    code = ("import berth.remotes as r\n"
            "from berth.remotes.hosts import HostsConfig\n"
            "from berth.remotes.reference import parse\n"
            "assert r.HostsConfig is HostsConfig and r.parse_reference is parse\n"
            "assert sorted(r.__all__) == sorted(r._LAZY)\n"
            "try:\n    r.missing\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')")
    loaded_after(code)


def test_the_cli_loads_no_http_stack_and_no_pydantic() -> None:
    # Every berth command imports the whole app; what only one command needs (login's HTTP
    # client, stats' live table) waits for it. typer 0.29 imports pydantic (~100 ms) to parse
    # any option: the pin stays on a typer that does not.
    code = "import berth.cli.app"
    script = (f"import sys, json\n{code}\n"
              "print(json.dumps([m for m in ('urllib3', 'pydantic', 'rich.live') "
              "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_the_codecs_and_re2_come_with_their_first_use() -> None:
    code = ("from berth.diff.compression import CompressingWriter, GZIP, ZSTD\n"
            "CompressingWriter(open('/dev/null', 'wb'), GZIP)\n"
            "CompressingWriter(open('/dev/null', 'wb'), ZSTD)\n"
            "from berth import filters\n"
            "filters.parse(['name~=^a'])")
    assert loaded_after(code) == {"re2", "isal", "zstandard"}
