"""berth: the command line for people (grows with each capability)."""

from __future__ import annotations

import sys


def main() -> int:
    from berth.cli.app import run

    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
