"""The in-process `new` application: import its factory, build it, check its routes.

`new: {app: "module:factory", config_dir: ...}` in routes.yaml names a plain
function returning an `aiohttp.web.Application`. It is called with the legacy
`Settings` (``legacy_compat.load_settings(config_dir)``) when `config_dir` is set
and with no arguments otherwise. The factory must be synchronous and must not
start anything itself: resources belong in the app's `cleanup_ctx`, which the
proxy runs (`proxy.webpath.inprocess.InProcessApp`). `club-proxy check` builds the app
without starting it, so checking never touches a database.
"""

from __future__ import annotations

import asyncio
import pkgutil
import re
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from proxy.errors import AppFactoryError
from proxy.routing.model import NEW

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from proxy.routing.model import NewTarget, Route

__all__ = ["build_new_app", "load_factory", "missing_new_routes", "unhandled_new_routes"]

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_PARAM = re.compile(r"\{([A-Za-z_]\w*)(\*?)\}")
# Values tried for each `{param}` when looking a route up in the new app: a
# handler route may constrain its parameter (`{id:\d+}`), so one value is not enough.
_SAMPLE_VALUES = ("1", "x", "a-1")


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:factory"`` and return the factory (AppFactoryError if not)."""
    if not _SPEC.fullmatch(spec):
        msg = f"app {spec!r} is not of the form 'package.module:factory'"
        raise AppFactoryError(msg)
    module_name, _, attr = spec.partition(":")
    try:
        # Imports the module, then looks the dotted attribute up in it.
        target: Any = pkgutil.resolve_name(spec)
    except AttributeError as exc:
        if module_name not in sys.modules:  # raised while importing the module
            msg = f"app {spec!r}: cannot import module {module_name!r}: {exc!r}"
        else:
            msg = f"app {spec!r}: module {module_name!r} has no attribute {attr!r}"
        raise AppFactoryError(msg) from exc
    # Importing user code can raise anything; report it as a config problem.
    except Exception as exc:
        msg = f"app {spec!r}: cannot import module {module_name!r}: {exc!r}"
        raise AppFactoryError(msg) from exc
    if not callable(target):
        msg = f"app {spec!r}: {attr!r} is not callable"
        raise AppFactoryError(msg)
    return target  # type: ignore[no-any-return]


def build_new_app(new: NewTarget) -> web.Application:
    """Build (but do not start) the in-process app described by routes.yaml `new:`."""
    if new.app is None:
        msg = "new has no 'app' (it is an out-of-process url target)"
        raise AppFactoryError(msg)
    factory = load_factory(new.app)
    try:
        if new.config_dir is not None:
            # Imported here: legacy_compat pulls in the database and Redis drivers,
            # which a proxy without an in-process app never needs.
            from legacy_compat import load_settings  # noqa: PLC0415

            result = factory(load_settings(new.config_dir))
        else:
            result = factory()
    # The factory is user code: whatever it raises means "cannot build the app".
    except Exception as exc:
        msg = f"app {new.app!r}: the factory failed: {exc!r}"
        raise AppFactoryError(msg) from exc
    return _require_application(new.app, result)


def _require_application(spec: str, result: object) -> web.Application:
    if isinstance(result, web.Application):
        return result
    if asyncio.iscoroutine(result):
        result.close()  # never awaited on purpose; closing avoids a RuntimeWarning
        msg = f"app {spec!r}: the factory is async; in-process factories must be plain functions"
        raise AppFactoryError(msg)
    msg = f"app {spec!r}: the factory returned {type(result).__name__}, not an aiohttp Application"
    raise AppFactoryError(msg)


def unhandled_new_routes(
    app: web.Application, routes: Iterable[Route]
) -> list[tuple[Route, str | None]]:
    """(route, method) pairs that go to `new` but have no handler there (method None: any)."""
    missing: list[tuple[Route, str | None]] = []
    for route in routes:
        if NEW not in _route_targets(route):
            continue
        samples = _sample_paths(route.path)
        if not route.methods:
            if not any(_handled(app, path, None) for path in samples):
                missing.append((route, None))
            continue
        missing.extend(
            (route, method)
            for method in sorted(route.methods)
            if not any(_handled(app, path, method) for path in samples)
        )
    return missing


def _route_targets(route: Route) -> set[str]:
    targets = {route.to}
    if route.canary is not None:
        targets.add(route.canary.to)
    if route.shadow is not None:
        targets.add(route.shadow.to)
    return targets


def missing_new_routes(app: web.Application, routes: Iterable[Route]) -> list[str]:
    """Describe every route that sends traffic to `new` without a handler there."""
    return [
        f"line {route.line}: route {route.id!r} sends {method or 'any method'} "
        f"{route.path} to new, but the new app has no handler for it"
        for route, method in unhandled_new_routes(app, routes)
    ]


def _sample_paths(pattern: str) -> list[str]:
    return [_PARAM.sub(value, pattern) for value in _SAMPLE_VALUES]


def _handled(app: web.Application, path: str, method: str | None) -> bool:
    for resource in _resources_for(app, path):
        for route in resource:
            if method is None or route.method in {method, hdrs.METH_ANY}:
                return True
    return False


def _resources_for(app: web.Application, path: str) -> Iterator[web.AbstractResource]:
    for resource in app.router.resources():
        info = resource.get_info()
        if isinstance(resource, web.PrefixedSubAppResource):
            # A sub-app's own resources already carry its prefix: recurse with the full path.
            prefix = info.get("prefix", "")
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                yield from _resources_for(info["app"], path)
        elif isinstance(resource, web.StaticResource):
            if path.startswith(info["prefix"] + "/"):
                yield resource
        elif isinstance(resource, web.DynamicResource):
            if info["pattern"].fullmatch(path):
                yield resource
        elif info.get("path") == path:
            yield resource
