"""Generate berth/api from the .proto files that Debian's -dev packages ship.

containerd's protos are written for gogo/protobuf: its options change only the Go code, never the
wire format, so they are stripped here. The files are laid out again under ``berth/api/`` (their
protobuf package names stay those of containerd, which is what the wire sees) and compiled with
grpcio-tools. The output is git-ignored and rebuilt by ``make setup``.

The Kubernetes CRI (``runtime.v1``) has no ``.proto`` in Debian: PyPI's
``container-runtime-interface-api`` wheel carries its serialized descriptor in a module generated
for protobuf 6.x, and pins protobuf to that line. The wheel is therefore only downloaded (no
dependencies, into the git-ignored ``.cache/``), the descriptor read out of the module's source,
and ``berth/api/cri/runtime/v1`` generated from it with ``--descriptor_set_in`` for the protobuf
Berth pins.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GOCODE = Path("/usr/share/gocode/src/github.com")
CONTAINERD = GOCODE / "containerd/containerd"
PROTOS_DIR = Path(__file__).resolve().parent.parent / "protos"
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "genproto"
CRI_WHEEL = ("container-runtime-interface-api", "2.0.1")
CRI_MODULE = "cri_api/v1/api_pb2.py"
CRI_PROTO = "berth/api/cri/runtime/v1/api.proto"

def _sources() -> dict[Path, str]:
    """Each source .proto and its path in the staging tree."""
    mapping: dict[Path, str] = {}
    api = CONTAINERD / "api"
    for proto in sorted(api.rglob("*.proto")):
        mapping[proto] = "berth/api/" + str(proto.relative_to(api))
    mapping[CONTAINERD / "runtime/v2/task/shim.proto"] = "berth/api/runtime/task/v2/shim.proto"
    mapping[CONTAINERD / "runtime/v2/runc/options/oci.proto"] = (
        "berth/api/runtime/runc/options/oci.proto"
    )
    cgroups = GOCODE / "containerd/cgroups"
    mapping[cgroups / "stats/v1/metrics.proto"] = "berth/api/cgroups/v1/metrics.proto"
    mapping[cgroups / "v2/stats/metrics.proto"] = "berth/api/cgroups/v2/metrics.proto"
    rpc_status = GOCODE / "gogo/googleapis/google/rpc/status.proto"
    mapping[rpc_status] = "berth/api/google/rpc/status.proto"
    # Berth's own protos (ttrpc envelope, Berth extension services).
    for proto in sorted(PROTOS_DIR.rglob("*.proto")):
        mapping[proto] = "berth/api/" + str(proto.relative_to(PROTOS_DIR))
    return mapping


_IMPORT_REWRITES = {
    "github.com/containerd/containerd/api/": "berth/api/",
    "github.com/containerd/containerd/runtime/v2/task/": "berth/api/runtime/task/v2/",
    "github.com/containerd/cgroups/stats/v1/": "berth/api/cgroups/v1/",
    "github.com/containerd/cgroups/v2/stats/": "berth/api/cgroups/v2/",
    "google/rpc/status.proto": "berth/api/google/rpc/status.proto",
}

_DROP_IMPORT = re.compile(
    r'^\s*import\s+(weak\s+)?"(gogoproto/gogo\.proto|github\.com/gogo/protobuf/gogoproto/gogo\.proto|'
    r'github\.com/containerd/containerd/protobuf/plugin/fieldpath\.proto)";\s*$',
    re.M,
)
_FILE_OPTION = re.compile(r"^\s*option\s+\((gogoproto|containerd\.plugin)\.[^;]*;\s*$", re.M)
_FIELD_OPTIONS = re.compile(r"\s*\[\s*\((gogoproto|containerd\.plugin)\.[^\]]*\]")


def _rewrite(text: str) -> str:
    text = _DROP_IMPORT.sub("", text)
    text = _FILE_OPTION.sub("", text)
    text = _FIELD_OPTIONS.sub("", text)
    for old, new in _IMPORT_REWRITES.items():
        text = text.replace(f'"{old}', f'"{new}')
    return text


def _cri_wheel() -> Path:
    """The CRI wheel in the cache, downloaded (without its dependencies) when missing."""
    name, version = CRI_WHEEL
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(CACHE_DIR.glob(pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                        "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
                        "-d", str(CACHE_DIR), f"{name}=={version}"], check=True)
        found = sorted(CACHE_DIR.glob(pattern))
    if not found:
        raise RuntimeError(f"genproto: pip download left no {pattern} in {CACHE_DIR}")
    return found[0]


def _cri_descriptor_set(wheel: Path) -> bytes:
    """A FileDescriptorSet of runtime.v1, renamed to its place under berth/api."""
    import zipfile

    from google.protobuf import descriptor_pb2

    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(CRI_MODULE).decode()
    serialized = None
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, bytes)):
            serialized = node.args[0].value
    if serialized is None:
        raise RuntimeError(f"genproto: no serialized descriptor in {wheel}:{CRI_MODULE}")
    fd = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    if fd.package != "runtime.v1" or list(fd.dependency):
        raise RuntimeError(f"genproto: unexpected CRI descriptor {fd.name} ({fd.package})")
    fd.name = CRI_PROTO
    return descriptor_pb2.FileDescriptorSet(file=[fd]).SerializeToString()


def _generate_cri(stage: Path, out: Path) -> None:
    descriptor_set = stage / "cri.pb"
    descriptor_set.write_bytes(_cri_descriptor_set(_cri_wheel()))
    subprocess.run([
        sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={descriptor_set}",
        f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}", CRI_PROTO,
    ], check=True)


def main() -> int:
    import grpc_tools

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        files = []
        for src, dest in _sources().items():
            if not src.exists():
                print(f"genproto: missing {src}: run `make setup` (Debian -dev packages)",
                      file=sys.stderr)
                return 1
            target = stage / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_rewrite(src.read_text()))
            files.append(dest)
        api_out = out / "berth/api"
        if api_out.exists():
            shutil.rmtree(api_out)
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{stage}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}",
            *files,
        ]
        subprocess.run(cmd, check=True)
        _generate_cri(stage, out)
        files.append(CRI_PROTO)
    for d in [api_out, *[p for p in api_out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    print(f"genproto: generated {len(files)} protos into {api_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
