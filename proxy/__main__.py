"""`club-proxy`: run the proxy or check a routes file.

    club-proxy run --routes routes.yaml [--host H] [--port P] [--admin-host H]
                   [--admin-port P] [--admin-token T] [--workers N]
                   [--trusted-proxy CIDR ...] [--via-pseudonym NAME]
                   [--underscores-in-headers]
                   [--drain-timeout S] [--shadow-dsn DSN]
                   [--shadow-queue N] [--shadow-workers N] [--shadow-rate N]
    club-proxy check ROUTES          validate like `nginx -t` (exit 0 or 1)
    club-proxy shadow status [--admin URL] [--token T]
                                     the shadowed routes and their verdicts
    club-proxy shadow suggest ROUTE [--admin URL] [--token T]
                                     the ignore rules learned noise suggests, as YAML
    club-proxy capture export FILE.jsonl --har OUT.har
                                     a capture file as HAR 1.2

The admin token may also come from CLUB_PROXY_ADMIN_TOKEN and the shadow
store's DSN from CLUB_PROXY_SHADOW_DSN, so they stay out of the process list. Logging is configured here and nowhere else: JSON lines,
the access log on stdout, everything else on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from proxy.errors import ProxyError
from proxy.serving.capturecli import add_capture_commands, run_capture_command
from proxy.serving.check import run_check
from proxy.serving.comparecli import add_compare_command, run_compare
from proxy.serving.server import ServeConfig, run
from proxy.serving.shadowcli import add_shadow_commands, run_shadow_command
from proxy.telemetry.accesslog import configure_logging

__all__ = ["main"]

# argparse fills in the value. Written out per option rather than through
# ArgumentDefaultsHelpFormatter, which would print the values of defaults
# read from the environment (the admin token, the shadow DSN's password).
_DEFAULT = "(default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="club-proxy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("run", help="run the proxy")
    serve.add_argument("--routes", type=Path, required=True, help="the routes.yaml file")
    serve.add_argument("--host", default="127.0.0.1", help=_DEFAULT)
    serve.add_argument("--port", type=int, default=8000, help=_DEFAULT)
    serve.add_argument("--admin-host", default="127.0.0.1", help=_DEFAULT)
    serve.add_argument("--admin-port", type=int, default=9901, help=f"0 for none {_DEFAULT}")
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("CLUB_PROXY_ADMIN_TOKEN"),
        help="bearer token for the admin API, required off loopback "
        "(default: $CLUB_PROXY_ADMIN_TOKEN)",
    )
    serve.add_argument("--workers", type=int, default=1, help=f"processes on one port {_DEFAULT}")
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a proxy in front whose X-Forwarded-* headers are kept (repeatable)",
    )
    serve.add_argument(
        "--via-pseudonym",
        default="club-proxy",
        metavar="NAME",
        help=f"this proxy's name in Via; tiers in series need different names {_DEFAULT}",
    )
    serve.add_argument(
        "--underscores-in-headers",
        action="store_true",
        help="forward request headers whose names contain '_' (dropped by default, as nginx)",
    )
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, help=f"seconds, on SIGTERM {_DEFAULT}"
    )
    serve.add_argument("--log-level", default="INFO", help=_DEFAULT)
    serve.add_argument("--no-access-log", action="store_true")
    serve.add_argument(
        "--no-fast-lane",
        action="store_true",
        help="serve every request through aiohttp's web layer (see docs/proxy.md)",
    )
    serve.add_argument(
        "--shadow-dsn",
        default=os.environ.get("CLUB_PROXY_SHADOW_DSN"),
        metavar="DSN",
        help="PostgreSQL for shadow results, shared by replicas (default: "
        "$CLUB_PROXY_SHADOW_DSN, else routes.yaml's shadow_store, else memory)",
    )
    serve.add_argument(
        "--shadow-queue",
        type=int,
        default=1024,
        help=f"shadow copies waiting, per process {_DEFAULT}",
    )
    serve.add_argument(
        "--shadow-workers",
        type=int,
        default=16,
        help=f"shadow copies in flight, per process {_DEFAULT}",
    )
    serve.add_argument(
        "--shadow-rate",
        type=float,
        default=200.0,
        help=f"shadow copies per second at most, per process, 0 for no cap {_DEFAULT}",
    )
    check = commands.add_parser("check", help="validate a routes file")
    check.add_argument("routes", type=Path)
    add_shadow_commands(commands)
    add_compare_command(commands)
    add_capture_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return run_check(args.routes)
    if args.command == "shadow":
        return run_shadow_command(args)
    if args.command == "compare":
        return run_compare(args)
    if args.command == "capture":
        return run_capture_command(args)
    configure_logging(args.log_level, access_log=not args.no_access_log)
    try:
        config = ServeConfig(
            routes_path=args.routes,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port or None,
            admin_token=args.admin_token or None,
            workers=args.workers,
            trusted_proxies=tuple(args.trusted_proxy),
            pseudonym=args.via_pseudonym,
            underscores_in_headers=args.underscores_in_headers,
            drain_timeout=args.drain_timeout,
            log_level=args.log_level,
            access_log=not args.no_access_log,
            fast_lane=not args.no_fast_lane,
            shadow_dsn=args.shadow_dsn or None,
            shadow_queue=args.shadow_queue,
            shadow_workers=args.shadow_workers,
            shadow_rate=args.shadow_rate,
        )
        return run(config)
    except (ProxyError, ValueError, OSError) as exc:
        print(f"club-proxy: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's own message
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
