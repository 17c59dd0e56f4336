"""routes.yaml: the route model, loading with line numbers, matching, canary, live reload.

Pure Python (no aiohttp): a `RouteTable` is built whole from a file
(`load_routes`), is immutable, and answers `match(method, path)`;
`RoutesWatcher` swaps tables atomically when the file changes.
"""

from proxy.routing.canary import choose_target, sticky_bucket
from proxy.routing.model import (
    NEW,
    Canary,
    NewTarget,
    Route,
    RouteMatch,
    Sticky,
    StickyKind,
    Timeouts,
    Upstream,
)
from proxy.routing.reload import ReloadResult, RoutesWatcher
from proxy.routing.table import RouteTable, load_routes, parse_routes

__all__ = [
    "NEW",
    "Canary",
    "NewTarget",
    "ReloadResult",
    "Route",
    "RouteMatch",
    "RouteTable",
    "RoutesWatcher",
    "Sticky",
    "StickyKind",
    "Timeouts",
    "Upstream",
    "choose_target",
    "load_routes",
    "parse_routes",
    "sticky_bucket",
]
