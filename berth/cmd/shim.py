"""containerd-shim-berth-v2: Berth's runtime v2 shim (see berth.shim.main for the contract)."""

from __future__ import annotations

import sys


def main() -> int:
    # Imported here, not at the top: the shim's entry must stay as light as its modules are.
    from berth.shim.main import main as shim_main

    return shim_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
