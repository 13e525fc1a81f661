"""Imports point one way: Berth's package graph, computed from the source, has no cycle and no
edge that climbs a layer.

The layers (the README's architecture section draws them), bottom first::

    0  errdefs
    1  identifiers namespaces labels digest filters clock logfmt fsmode rootpath leases
       shimcontract                            vocabulary, shared with the shim
    2  oci ttrpc mount images containers       protocol cores and record types
    3  content snapshots diff remotes events   local objects behind Protocols
    4  metadata runtime plugin shim            namespaced stores; tasks; plugin registry;
                                               Berth's shim (a program of its own)
    5  transfer gc                             work that composes the stores
    6  services proxy client metrics wire      the gRPC edge: servicers in, typed clients out,
                                               the conversions both share (wire)
    7  cli cri daemon builtins                 people's CLI, the Kubernetes front end, berthd
    8  cmd                                     entry points

A package may import packages of its own layer or below (never above), and the graph must
have no cycle. The shim (``berth/shim``) is a separate program: it shares only layers 0-2 with
the daemon, and only its entry point (``berth/cmd``) imports it. Every import counts, those
inside functions and under ``TYPE_CHECKING`` too: a deferred import is still a dependency.
Generated modules (``berth/api``) sit outside the graph.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

BERTH = Path(__file__).resolve().parent.parent / "berth"

LAYERS: list[set[str]] = [
    {"errdefs"},
    {"identifiers", "namespaces", "labels", "digest", "filters", "clock", "logfmt", "fsmode",
     "rootpath", "leases", "shimcontract", "shimgroups", "shimlaunch", "spawn", "crilog",
     "heap"},
    {"oci", "ttrpc", "mount", "images", "containers"},
    {"content", "snapshots", "diff", "remotes", "events"},
    {"metadata", "runtime", "plugin", "shim"},
    {"transfer", "gc"},
    {"services", "proxy", "client", "metrics", "wire"},
    {"cli", "cri", "daemon", "builtins"},
    {"cmd"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
SHIM_MAY_IMPORT = {name for names in LAYERS[:3] for name in names}


def packages() -> list[str]:
    """Berth's packages and top-level modules (``berth/<name>``), the graph's nodes."""
    names = []
    for path in BERTH.iterdir():
        if path.name in ("api", "__pycache__") or path.name.startswith("."):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.append(path.name)
        elif path.suffix == ".py" and path.name != "__init__.py":
            names.append(path.stem)
    return sorted(names)


def imported_packages(path: Path) -> Iterator[tuple[str, int]]:
    """(package, line) for each ``berth.<package>`` a module imports."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "berth":  # from berth import errdefs, labels
                modules = [f"berth.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "berth" and len(parts) > 1 and parts[1] != "api":
                yield parts[1], node.lineno


def package_of(path: Path) -> str:
    relative = path.relative_to(BERTH)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def graph() -> dict[str, dict[str, str]]:
    """package -> {imported package: where (file:line), the first place seen}."""
    edges: dict[str, dict[str, str]] = {name: {} for name in packages()}
    for path in sorted(BERTH.rglob("*.py")):
        if "api" in path.relative_to(BERTH).parts[:1] or (path.name == "__init__.py" \
                and path.parent == BERTH):
            continue
        source = package_of(path)
        for target, line in imported_packages(path):
            if target != source:
                edges[source].setdefault(target, f"{path.relative_to(BERTH.parent)}:{line}")
    return edges


def find_cycle(edges: dict[str, dict[str, str]]) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] if it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_every_package_has_a_layer() -> None:
    missing = [name for name in packages() if name not in RANK]
    assert not missing, f"give these a layer in LAYERS (and the README's drawing): {missing}"


def test_no_import_climbs_a_layer() -> None:
    edges = graph()
    upward = [f"{src} (layer {RANK[src]}) imports {dst} (layer {RANK[dst]}) at {where}"
              for src, targets in sorted(edges.items()) if src in RANK
              for dst, where in sorted(targets.items()) if dst in RANK and RANK[dst] > RANK[src]]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_package_graph_has_no_cycle() -> None:
    edges = graph()
    cycle = find_cycle(edges)
    steps = [f"{a} ({edges[a][b]})" for a, b in itertools.pairwise(cycle)]
    assert not cycle, "import cycle: " + " -> ".join(steps) + f" -> {cycle[-1]}"


def test_the_shim_shares_only_the_bottom_layers() -> None:
    edges = graph()
    foreign = {dst: where for dst, where in edges.get("shim", {}).items()
               if dst not in SHIM_MAY_IMPORT}
    assert not foreign, f"the shim imports daemon packages: {foreign}"


def test_only_the_entry_point_imports_the_shim() -> None:
    importers = {src: targets["shim"] for src, targets in graph().items()
                 if "shim" in targets and src != "cmd"}
    assert not importers, f"the daemon reaches into the shim's code: {importers}"


def test_the_checker_sees_cycles_and_climbs() -> None:
    """The checks above can fail: a made-up graph with a cycle and an upward edge."""
    edges = {"a": {"b": "x:1"}, "b": {"c": "x:2"}, "c": {"a": "x:3"}, "d": {}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "x:1"}, "b": {}}) == []
    assert RANK["services"] > RANK["runtime"]  # so runtime -> services is caught as upward
