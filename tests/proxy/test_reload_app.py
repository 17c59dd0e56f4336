"""A reload is held to what the running proxy can serve, as `club-proxy check` is.

The in-process `new` app is built once, at startup. A reload whose table sends a
method and path to `new` that the running app has no handler for, or that
needs another app (`new: {app, config_dir}` added, changed or switched to a
url), is refused like an invalid file: the last good table stays, the failure
is counted and shown. An out-of-process `new: {url}` may change on reload.

Each proxy here watches with a long poll interval and the test drives the
watcher itself (`poll()` twice: the settle rule, or `reload()`: SIGHUP), so no
test waits on a timer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from proxy.serving.admin import create_admin_app
from proxy.serving.app import PROXY, create_app
from proxy.serving.check import check_routes
from tests.proxy import forward_support

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient

    from proxy.routing.reload import ReloadResult, RoutesWatcher
    from tests.proxy.echo_upstream import EchoUpstream

SAMPLE = "tests.proxy.newapp_sample:create_app"
APP = f'new: {{app: "{SAMPLE}"}}\n'


# Two distinct echo upstreams, from the one fixture function.
legacy = forward_support.upstream
other = forward_support.upstream


def routes_text(legacy: EchoUpstream, new: str, routes: str) -> str:
    listed = f"routes:\n{routes}" if routes else "routes: []\n"
    return (
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy.url}"}}}}\n'
        f"{new}default: legacy\n{listed}"
    )


USER_TO_NEW = '  - {id: user-get, match: "GET /api/users/{id}", to: new}\n'


async def serve(
    aiohttp_client: AiohttpClient, tmp_path: Path, text: str
) -> tuple[TestClient[Any, Any], web.Application]:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    app = create_app(routes_path=path, poll_interval=3600, reload_on_sighup=False)
    return await aiohttp_client(app), app


async def watch_step(watcher: RoutesWatcher) -> ReloadResult | None:
    """What the watcher does with settled content: seen on one poll, applied on the next."""
    assert await watcher.poll() is None
    return await watcher.poll()


async def answer_of(client: TestClient[Any, Any], path: str) -> tuple[int, Any]:
    async with client.get(path) as response:
        return response.status, json.loads(await response.read())


async def test_reload_refuses_a_route_to_new_the_running_app_cannot_handle(
    tmp_path: Path, legacy: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    client, app = await serve(aiohttp_client, tmp_path, routes_text(legacy, APP, USER_TO_NEW))
    admin = await aiohttp_client(create_admin_app(app))
    watcher = app[PROXY].watcher
    good = watcher.table
    unhandled = '  - {id: nothing, match: "GET /api/nothing", to: new}\n'
    watcher.path.write_text(routes_text(legacy, APP, USER_TO_NEW + unhandled), encoding="utf-8")
    [expected] = check_routes(watcher.path)  # what `club-proxy check` says of this file
    assert "route 'nothing' sends GET /api/nothing to new" in expected

    result = await watch_step(watcher)
    assert result is not None
    assert (result.ok, result.error, result.trigger) == (False, expected, "watch")
    assert watcher.table is good
    result = watcher.reload()  # SIGHUP refuses it the same way
    assert (result.ok, result.error, result.trigger) == (False, expected, "reload")
    async with admin.get("/-/routes") as response:
        shown = await response.json()
    assert (shown["last_reload"]["ok"], shown["last_reload"]["error"]) == (False, expected)
    assert shown["reloads"] == {"success": 0, "failure": 2}
    metrics = app[PROXY].metrics.render().decode()
    assert 'club_proxy_route_reloads_total{result="failure"} 2.0' in metrics
    # The old table answers: legacy, not the new app's 404.
    status, body = await answer_of(client, "/api/nothing")
    assert (status, body["port"]) == (200, legacy.port)

    handled = '  - {id: stream, match: "GET /api/stream", to: new}\n'
    watcher.path.write_text(routes_text(legacy, APP, USER_TO_NEW + handled), encoding="utf-8")
    assert check_routes(watcher.path) == []
    result = await watch_step(watcher)
    assert result is not None
    assert (result.ok, result.changed) == (True, True)
    async with client.get("/api/stream") as response:
        assert (response.status, await response.read()) == (200, b"one two three")


@dataclass(frozen=True)
class Refused:
    before: str  # the `new:` section the proxy starts with
    after: str  # the one the edit writes
    change: str  # how the error names the change ({tmp}: the test's directory)
    answered_by: str  # who answers GET /api/users/7 after the refusal


REFUSED = [
    pytest.param(
        Refused("", APP, f"no in-process app -> app '{SAMPLE}'", "legacy"), id="app-added"
    ),
    pytest.param(
        Refused(
            APP,
            'new: {app: "tests.proxy.newapp_sample:not_an_app"}\n',
            f"app '{SAMPLE}' -> app 'tests.proxy.newapp_sample:not_an_app'",
            "new",
        ),
        id="app-changed",
    ),
    pytest.param(
        Refused(
            APP,
            f'new: {{app: "{SAMPLE}", config_dir: conf}}\n',
            f"app '{SAMPLE}' -> app '{SAMPLE}' with config_dir {{tmp}}/conf",
            "new",
        ),
        id="config-dir-added",
    ),
    pytest.param(
        Refused(
            APP,
            'new: {url: "http://127.0.0.1:9"}\n',
            f"app '{SAMPLE}' -> url http://127.0.0.1:9",
            "new",
        ),
        id="app-to-url",
    ),
]


@pytest.mark.parametrize("case", REFUSED)
async def test_reload_that_needs_another_app_is_refused(
    tmp_path: Path, legacy: EchoUpstream, aiohttp_client: AiohttpClient, case: Refused
) -> None:
    routes = USER_TO_NEW if case.before else ""
    client, app = await serve(aiohttp_client, tmp_path, routes_text(legacy, case.before, routes))
    watcher = app[PROXY].watcher
    good = watcher.table
    watcher.path.write_text(routes_text(legacy, case.after, USER_TO_NEW), encoding="utf-8")

    result = watcher.reload()
    expected = (
        f"{watcher.path}:3: new: the new: section changed "
        f"({case.change.format(tmp=tmp_path.resolve())}); restart club-proxy to load another app"
    )
    assert (result.ok, result.error) == (False, expected)
    assert watcher.table is good
    assert (watcher.reload_successes, watcher.reload_failures) == (0, 1)
    # Served as before the edit: by the app the proxy started, or by legacy when none.
    status, body = await answer_of(client, "/api/users/7")
    assert status == 200
    assert body.get("side", "legacy") == case.answered_by


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(("", "url-b"), id="url-added"),
        pytest.param(("url-a", "url-b"), id="url-changed"),
        pytest.param(("app", ""), id="new-dropped"),
    ],
)
async def test_reload_may_change_what_new_is_when_no_other_code_is_needed(
    tmp_path: Path,
    legacy: EchoUpstream,
    other: EchoUpstream,
    aiohttp_client: AiohttpClient,
    edit: tuple[str, str],
) -> None:
    # `new: {url}` is an upstream like the others: the dispatch builds it from
    # the request's own table and the pools follow reloads.
    sections = {
        "": "",
        "app": APP,
        "url-a": f'new: {{url: "{legacy.url}"}}\n',
        "url-b": f'new: {{url: "{other.url}"}}\n',
    }
    before, after = edit
    text = routes_text(legacy, sections[before], USER_TO_NEW if before else "")
    client, app = await serve(aiohttp_client, tmp_path, text)
    watcher = app[PROXY].watcher
    text = routes_text(legacy, sections[after], USER_TO_NEW if after else "")
    watcher.path.write_text(text, encoding="utf-8")

    result = await watch_step(watcher)
    assert result is not None
    assert (result.ok, result.changed, result.error) == (True, True, None)
    status, body = await answer_of(client, "/api/users/7")
    assert (status, body["port"]) == (200, other.port if after == "url-b" else legacy.port)


async def test_an_app_that_cannot_be_built_is_a_warning_until_a_route_needs_it(
    tmp_path: Path, legacy: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    # As `club-proxy check` says of this file: nothing uses new, so it serves.
    missing = 'new: {app: "tests.proxy.no_such_module:create_app"}\n'
    client, app = await serve(aiohttp_client, tmp_path, routes_text(legacy, missing, ""))
    assert check_routes(app[PROXY].watcher.path) == []
    status, body = await answer_of(client, "/api/users/7")
    assert (status, body["port"]) == (200, legacy.port)
    watcher = app[PROXY].watcher
    watcher.path.write_text(routes_text(legacy, missing, USER_TO_NEW), encoding="utf-8")
    result = watcher.reload()
    assert result.ok is False
    assert result.error == (
        f"{watcher.path}:3: new: the new app (tests.proxy.no_such_module:create_app) could not"
        " be built when club-proxy started; restart it once the app can be built"
    )
    status, body = await answer_of(client, "/api/users/7")
    assert (status, body["port"]) == (200, legacy.port)
