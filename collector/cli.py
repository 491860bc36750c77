"""The `collector` command: serve, loader, gen, stats rebuild, check-config.

Every command shares `--config FILE` and `--data-dir DIR`; `serve` adds `--host`, `--port`,
`--workers`. Flags beat environment variables (`COLLECTOR_<SECTION>_<KEY>`), which beat the
TOML file, which beats the defaults (collector/defaults.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector import __version__
from collector.config import Config, load_config
from collector.errors import ConfigError


def _timestamp(value: str) -> float:
    """UNIX seconds, or an ISO 8601 date/time (UTC when no offset is given)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither UNIX seconds nor an ISO date like 2026-11-29T10:00"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _common(*, top: bool) -> argparse.ArgumentParser:
    """The flags every command shares, accepted before or after the command's name.

    A subcommand's copies default to SUPPRESS: argparse fills a subparser's defaults into the
    same namespace after the top level's flags were read, so with ordinary defaults
    `collector --data-dir X serve` would lose X without a word.
    """
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration (default conf/collector.toml when it exists)",
                   **unset)
    p.add_argument("--data-dir", metavar="DIR",
                   help="where everything the collector writes lives (default ./data)", **unset)
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)",
                   **(unset or {"default": "INFO"}))
    return p


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0-65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    common = _common(top=False)
    parser = argparse.ArgumentParser(
        prog="collector", parents=[_common(top=True)],
        description="Self-hosted event collector: HTTP ingestion into NDJSON segments, "
                    "real-time Redis stats, and a loader into SQLite or MongoDB.")
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the collector (and its loader)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port")

    loader = sub.add_parser("loader", parents=[common],
                            help="run the loader alone (segments -> event store)")
    loader.add_argument("--metrics-port", type=_port,
                        help="serve the loader's Prometheus metrics on 127.0.0.1:PORT")

    sub.add_parser("gen", parents=[common], add_help=False,
                   help="random event generator (see `collector gen -h`)")

    stats = sub.add_parser("stats", parents=[common], help="real-time stats maintenance")
    stats_sub = stats.add_subparsers(dest="stats_command", metavar="ACTION")
    rebuild = stats_sub.add_parser("rebuild", parents=[common],
                                   help="recompute Redis counters from the segment files")
    rebuild.add_argument("--since", type=_timestamp, required=True,
                         help="start of the window: UNIX seconds or ISO date")
    rebuild.add_argument("--until", type=_timestamp,
                         help="end of the window (default: now)")
    rebuild.add_argument("--include-open", action="store_true",
                         help="also replace the buckets still receiving live counts (the "
                              "current minute, hour, day); counts added while it runs are lost")
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("check-config", parents=[common],
                   help="print the effective configuration and exit")

    worker = sub.add_parser("_worker", parents=[common], help=argparse.SUPPRESS)
    worker.add_argument("--index", type=int, default=0)
    worker.add_argument("--ready-file")
    return parser


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {"data_dir": args.data_dir}
    for flag in ("host", "port", "workers"):
        if getattr(args, flag, None) is not None:
            overrides[f"server.{flag}"] = getattr(args, flag)
    return load_config(args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gen":
        from collector.gen import main as gen_main

        return gen_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        cfg = _config(args)
    except ConfigError as e:
        print(f"collector: configuration error: {e}", file=sys.stderr)
        return 2

    if args.command == "serve":
        _setup_logging(args.log_level, "supervisor")
        from collector import processors
        from collector.supervisor import serve

        try:
            processors.check(cfg)
        except ConfigError as e:
            print(f"collector: configuration error: {e}", file=sys.stderr)
            return 2

        return serve(cfg, args.config)
    if args.command == "_worker":
        _setup_logging(args.log_level, f"worker-{args.index}")
        from collector.app import run_worker_process

        ready = Path(args.ready_file) if args.ready_file else None
        return run_worker_process(cfg, args.index, ready)
    if args.command == "loader":
        _setup_logging(args.log_level, "loader")
        from loader.daemon import main as loader_main

        return loader_main(cfg, metrics_port=args.metrics_port)
    if args.command == "stats":
        if args.stats_command != "rebuild":
            parser.parse_args(["stats", "--help"])
            return 2
        _setup_logging(args.log_level, "rebuild")
        import redis

        from collector.stats_rebuild import rebuild

        try:
            summary = rebuild(cfg, args.since, args.until, progress=not args.no_progress,
                              include_open=args.include_open)
        except (RuntimeError, ValueError, redis.RedisError) as e:
            print(f"collector stats rebuild: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ncollector stats rebuild: interrupted; run it again with the same --since "
                  "to finish", file=sys.stderr)
            return 130
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        return 0
    if args.command == "check-config":
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
        return 0
    parser.print_help()
    return 2
