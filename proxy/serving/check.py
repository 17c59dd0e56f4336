"""`club-proxy check routes.yaml`: validate like ``nginx -t``.

Beyond what every load checks (schema, targets, ambiguity), the check builds the
in-process `new` app (without starting it: no database is touched) and
requires a handler in it for every method and path a route sends to `new`,
including canary shares. When nothing is sent to `new` yet, an app that
cannot be built is only a warning, so a cutover map can be written before the
new code exists. A live reload applies the same handler rule against the app
the proxy runs (`reload_errors`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from proxy.errors import AppFactoryError, RoutesError
from proxy.routing._yaml import compose
from proxy.routing.model import NEW
from proxy.routing.table import RouteTable, load_routes
from proxy.webpath.appfactory import build_new_app, unhandled_new_routes

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web

    from proxy.routing.model import NewTarget, Route

__all__ = [
    "CheckReport",
    "check_report",
    "check_routes",
    "handler_errors",
    "reload_errors",
    "run_check",
]

_PROG = "club-proxy"


@dataclass(slots=True)
class CheckReport:
    """What `check` found: `errors` fail the check, `warnings` do not."""

    table: RouteTable | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_routes(path: Path) -> list[str]:
    """Every problem in the routes file and its `new` app; empty when valid."""
    return check_report(path).errors


def check_report(path: Path) -> CheckReport:
    """Like `check_routes`, with warnings and the table when it loaded."""
    try:
        table = load_routes(path)
    except RoutesError as exc:
        return CheckReport(errors=[str(error) for error in exc.errors])
    report = CheckReport(table=table)
    new = table.new
    if new is None or new.app is None:
        return report
    where = f"{path}:{_line_of(path, 'new', 'app')}: new.app"
    if new.config_dir is not None and not new.config_dir.is_dir():
        report.errors.append(f"{where}: config_dir {new.config_dir} is not a directory")
        return report
    try:
        app = build_new_app(new)
    except AppFactoryError as exc:
        if table.uses_new:
            report.errors.append(f"{where}: {exc}")
        else:
            report.warnings.append(f"{where}: {exc} (no route uses new yet)")
        return report
    report.errors.extend(handler_errors(table, app))
    return report


def handler_errors(table: RouteTable, app: web.Application) -> list[str]:
    """One error per route and method that `table` sends to `new` and `app` has no handler for."""
    spec = table.new.app if table.new is not None else None
    index = {route.id: i for i, route in enumerate(table.routes)}
    return [
        f"{table.source}:{route.line}: routes[{index[route.id]}]."
        f"{_new_key(route)}: route {route.id!r} sends "
        f"{method or 'every method'} {route.path} to new, but the new app "
        f"({spec}) has no handler for it"
        for route, method in unhandled_new_routes(app, table.routes)
    ]


def _new_key(route: Route) -> str:
    """The key of `route` that sends traffic to `new`."""
    if route.to == NEW:
        return "to"
    if route.canary is not None and route.canary.to == NEW:
        return "canary.to"
    return "shadow.to"


def reload_errors(
    table: RouteTable, *, running: NewTarget | None, app: web.Application | None
) -> list[str]:
    """Why a running proxy must refuse `table` on reload; empty when it may apply it.

    `running` is the `new:` the in-process `app` was built from (both None when
    no app runs; `app` alone None when it could not be built, which only a
    table that sends nothing to `new` may live with). A reload never loads
    other Python code, so the in-process part of `new:` (`app`, `config_dir`)
    must stay as it started; then every route to `new` needs a handler in
    `app`, as `check` requires. Changing or adding a `new: {url}` (with no app
    running) or dropping `new:` is fine.
    """
    new = table.new
    where = f"{table.source}:{_line_of(table.source, 'new')}: new"
    if new is not None and _in_process(new) != _in_process(running):
        change = f"{_describe(running)} -> {_describe(new)}"
        return [
            f"{where}: the new: section changed ({change}); restart club-proxy to load another app"
        ]
    if app is not None:
        return handler_errors(table, app)
    if running is not None and table.uses_new:
        cause = f"the new app ({running.app}) could not be built when club-proxy started"
        return [f"{where}: {cause}; restart it once the app can be built"]
    return []


def run_check(path: Path, *, out: TextIO | None = None) -> int:
    """Print the verdict like ``nginx -t`` (to stderr by default); 0 when valid, 1 if not."""
    stream = out if out is not None else sys.stderr
    report = check_report(path)
    if report.table is not None:
        stream.write(f"{_PROG}: the routes file {path} syntax is ok\n")
    for warning in report.warnings:
        stream.write(f"{_PROG}: [warn] {warning}\n")
    for error in report.errors:
        stream.write(f"{_PROG}: [error] {error}\n")
    if report.errors:
        stream.write(f"{_PROG}: routes file {path} test failed\n")
        return 1
    if report.table is not None:
        stream.write(f"{_PROG}: {_summary(report.table)}\n")
    stream.write(f"{_PROG}: routes file {path} test is successful\n")
    return 0


def _summary(table: RouteTable) -> str:
    to_new = sum(1 for route in table.routes if route.to == NEW)
    upstreams = ", ".join(sorted(table.upstreams)) or "none"
    return (
        f"{len(table.routes)} routes ({to_new} to new), upstreams: {upstreams}, "
        f"default: {table.default}, sha256 {table.digest[:12]}"
    )


def _in_process(new: NewTarget | None) -> tuple[str | None, Path | None]:
    return (new.app, new.config_dir) if new is not None else (None, None)


def _describe(new: NewTarget | None) -> str:
    if new is not None and new.app is not None:
        config = f" with config_dir {new.config_dir}" if new.config_dir is not None else ""
        return f"app {new.app!r}{config}"
    return f"url {new.url}" if new is not None else "no in-process app"


def _line_of(path: Path, *keys: str) -> int:
    # The table keeps no line for `new:`; find it again in the file (0 if it changed meanwhile).
    try:
        node = compose(path.read_bytes(), path)
        for key in keys:
            node = node.entries()[key]
    except (OSError, RoutesError, KeyError):
        return 0
    return node.line
