"""Write the venv's ``containerd-shim-berth-v2``: a launcher of our own, not pip's.

A daemon runs the shim binary's ``start`` on every container start, so the launcher's cost is on
that path. pip's generated launcher runs the interpreter with site initialisation (about 3 ms:
the venv's .pth files) and, in the pip that comes with Python 3.11, imports ``re`` (5 ms more).
This one runs ``python -IS`` (isolated, no site) with a fixed import path: Berth's source tree,
then the venv's packages (``start`` parses protobuf runtime options when a daemon sends them).
``make setup`` runs it after installing the package; run it with the venv's python.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from pathlib import Path

NAME = "containerd-shim-berth-v2"
TRIPLE = "'" * 3


def launcher(python: str, root: str, packages: str) -> str:
    """Berth's tree before the standard library (as an editable install has it), the venv's
    packages after it (as site would add them)."""
    body = (f"# Written by tools/shim_launcher.py (see there why not pip's).\n"
            f"import sys\n"
            f"sys.path.insert(0, {root!r})\n"
            f"sys.path.append({packages!r})\n"
            f"from berth.cmd.shim import main\n"
            f"sys.exit(main())\n")
    shebang = f"#!{python} -IS"
    if len(shebang) < 128 and not any(c.isspace() for c in python):
        return f"{shebang}\n{body}"
    # The kernel splits a shebang at whitespace and cuts it at 127 bytes: then /bin/sh runs
    # the file, and its second line (to Python, a string statement) execs the interpreter.
    line = f'exec {shlex.quote(python)} -IS "$0" "$@"'
    if TRIPLE in line:
        raise SystemExit(f"shim_launcher: cannot write a launcher for {python!r}")
    return f"#!/bin/sh\n{TRIPLE}'{line} # {TRIPLE}\n{body}"


def main() -> int:
    if sys.prefix == sys.base_prefix:
        print("shim_launcher: run me with the venv's python", file=sys.stderr)
        return 1
    root = str(Path(__file__).resolve().parent.parent)
    target = Path(sys.prefix) / "bin" / NAME
    python = str(Path(sys.prefix) / "bin" / "python3")
    text = launcher(python, root, sysconfig.get_paths()["purelib"])
    tmp = target.with_name(f".{NAME}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
