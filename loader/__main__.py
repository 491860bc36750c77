"""`python -m loader [--data-dir DIR] [--config FILE] [--metrics-port N] [--wait]`.

The product's entry point is `collector loader`; this one exists so the loader can run before
(or without) the collector's CLI, e.g. in the crash test and on a host that only loads.
"""

from __future__ import annotations

import argparse
import logging
import sys

from collector.config import load_config
from collector.errors import ConfigError
from loader.daemon import main as run_loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loader", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--data-dir", help="data directory (segments, store, checkpoint)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus text on 127.0.0.1:PORT/metrics (0: none)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the lock when another loader runs, instead of exiting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        cfg = load_config(args.config, overrides={"data_dir": args.data_dir})
    except ConfigError as e:
        print(f"python -m loader: {e}", file=sys.stderr)
        return 2
    return run_loader(cfg, metrics_port=args.metrics_port, wait_for_lock=args.wait)


if __name__ == "__main__":
    raise SystemExit(main())
