"""`club-proxy shadow status|suggest`: the admin API's shadow results, for a terminal.

    club-proxy shadow status [--admin URL] [--token T]
    club-proxy shadow suggest ROUTE [--admin URL] [--token T]

Plain HTTP to the admin port (default http://127.0.0.1:9901); the token may
come from CLUB_PROXY_ADMIN_TOKEN. Exit 0 on an answer, 1 when the admin API
cannot be reached or refuses.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    import argparse

__all__ = ["add_shadow_commands", "format_status", "run_shadow_command"]

_DEFAULT_ADMIN: Final = "http://127.0.0.1:9901"
_COLUMNS: Final = (
    "route",
    "to",
    "compared",
    "match",
    "mismatch",
    "noise",
    "errors",
    "skipped",
    "rate",
    "verdict",
)


def add_shadow_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `shadow status` and `shadow suggest` to the CLI's subcommands."""
    shadow = commands.add_parser("shadow", help="shadow results from a running proxy")
    actions = shadow.add_subparsers(dest="shadow_command", required=True)
    status = actions.add_parser("status", help="every shadowed route and its verdict")
    suggest = actions.add_parser("suggest", help="ignore rules the learned noise suggests")
    suggest.add_argument("route", help="the route id")
    for parser in (status, suggest):
        parser.add_argument(
            "--admin", default=_DEFAULT_ADMIN, help=f"admin API URL ({_DEFAULT_ADMIN})"
        )
        parser.add_argument(
            "--token",
            default=os.environ.get("CLUB_PROXY_ADMIN_TOKEN"),
            help="admin bearer token (or CLUB_PROXY_ADMIN_TOKEN)",
        )


def run_shadow_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.shadow_command == "status":
        path = "/-/shadow"
    else:
        path = f"/-/shadow/{urllib.parse.quote(args.route, safe='')}/suggest"
    try:
        found = _get(args.admin.rstrip("/") + path, args.token)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"club-proxy: admin API at {args.admin}: {_reason(exc)}", file=sys.stderr)  # noqa: T201 - the CLI's own message
        return 1
    if args.shadow_command == "status":
        out.write(format_status(found))
    else:
        out.write(found["yaml"] or f"# no noise learned for {args.route} yet\n")
    return 0


def _get(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - an http(s) URL the operator gave
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
        return json.load(response)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            return f"{exc.code} {json.load(exc)['error']}"
        except (ValueError, KeyError, TypeError):
            return f"{exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)


def format_status(found: dict[str, Any]) -> str:
    """The per-route table of a `/-/shadow` answer."""
    routes = found.get("routes", [])
    where = found.get("store", "?")
    lines = [
        f"results: {where}"
        + ("" if found.get("store_ok", True) else " (unreachable: this process only)")
    ]
    if where == "memory":
        lines[0] += " (this process only)"
    if not routes:
        return "\n".join([*lines, "no shadowed routes"]) + "\n"
    rows = [_COLUMNS, *(_row(route) for route in routes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
    lines.extend(
        f"{route['id']}: {route['verdict_reason']}"
        for route in routes
        if route.get("verdict") == "not_ready" and route.get("verdict_reason")
    )
    return "\n".join(lines) + "\n"


def _row(route: dict[str, Any]) -> tuple[str, ...]:
    rate = route.get("match_rate")
    return (
        route["id"],
        str(route.get("shadow_to", "")),
        str(route.get("compared", 0)),
        str(route.get("matched", 0)),
        str(route.get("mismatched", 0)),
        str(route.get("noise", 0)),
        str(route.get("errors", 0)),
        str(sum(route.get("skipped", {}).values())),
        "-" if rate is None else f"{rate:.2%}",
        str(route.get("verdict", "")),
    )
