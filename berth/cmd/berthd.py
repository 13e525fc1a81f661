"""berthd: the Berth daemon."""

from __future__ import annotations

import argparse
import logging
import sys

from berth import __version__, errdefs, heap
from berth.logfmt import setup_logging
from berth.plugin import config as configmod


def main(argv: list[str] | None = None) -> int:
    heap.use_one_arena()  # before any thread starts: see berth.heap
    parser = argparse.ArgumentParser(
        prog="berthd", description="Berth: a container runtime daemon that speaks containerd's API")
    parser.add_argument("--config", "-c", default=None,
                        help=f"config file (default {configmod.DEFAULT_CONFIG})")
    parser.add_argument("--root", help=f"persistent state (default {configmod.DEFAULT_ROOT})")
    parser.add_argument("--state", help=f"runtime state (default {configmod.DEFAULT_STATE})")
    parser.add_argument("--address", "-a",
                        help=f"gRPC socket (default {configmod.DEFAULT_ADDRESS})")
    parser.add_argument("--log-level", "-l", default=None,
                        help="debug, info, warn or error (default info)")
    parser.add_argument("--version", "-v", action="version", version=f"berthd {__version__}")
    args = parser.parse_args(argv)

    try:
        cfg = configmod.load(args.config or configmod.DEFAULT_CONFIG,
                             required=args.config is not None)
    except errdefs.BerthError as err:
        print(f"berthd: {err}", file=sys.stderr)
        return 1
    cfg.root = args.root or cfg.root
    cfg.state = args.state or cfg.state
    cfg.address = args.address or cfg.address
    setup_logging(args.log_level or cfg.debug_level)

    from berth.daemon import Daemon

    daemon = Daemon(cfg)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except errdefs.BerthError as err:
        logging.getLogger("berthd").error("%s", err)
        daemon.stop()
        return 1
    daemon.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
