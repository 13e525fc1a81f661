"""containerd-shim-berth-v2: Berth's runtime v2 shim (task support is not built yet)."""

from __future__ import annotations

import sys


def main() -> int:
    print("containerd-shim-berth-v2: running tasks is not supported by this Berth build yet",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
