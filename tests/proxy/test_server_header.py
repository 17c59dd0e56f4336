"""A client cannot tell from the headers which side answered.

The legacy side and the new side are both aiohttp apps: through the proxy,
a legacy answer (relayed, with the upstream's own `Server`) and an in-process
new answer must carry the same header names, `Server` included, with the
same value when both run the same aiohttp. The proxy's own error answers
carry no `Server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.serving.app import create_app
from tests.proxy import newapp_sample

if TYPE_CHECKING:
    from pathlib import Path

    from multidict import CIMultiDictProxy
    from pytest_aiohttp import AiohttpClient, AiohttpServer

# Headers whose presence, not value, is compared (they differ per answer).
PER_ANSWER = {"content-length", "date", "x-request-id"}


def _names(headers: CIMultiDictProxy[str]) -> set[str]:
    return {name.lower() for name in headers}


async def test_legacy_and_new_answers_carry_the_same_headers(
    tmp_path: Path,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    unused_tcp_port_factory: Any,
) -> None:
    # The same aiohttp app code serves as legacy (over HTTP) and new (in-process).
    legacy = await aiohttp_server(newapp_sample.create_app())
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy.make_url("")}"}}, dead: {{url: "{dead}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: user-new, match: "GET /api/users/{id}", to: new}\n'
        '  - {id: gone, match: "GET /api/gone", to: dead}\n',
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    async with client.get("/api/users/1") as new:
        assert (await new.json())["side"] == "new"
        new_headers = new.headers
    async with client.get("/api/state") as old:
        assert old.status == 200
        old_headers = old.headers
    assert _names(new_headers) == _names(old_headers)
    for name in _names(old_headers) - PER_ANSWER:
        assert new_headers.getall(name) == old_headers.getall(name), name
    assert "Server" in new_headers
    async with client.get("/api/gone") as error:
        assert error.status == 502
        assert "Server" not in error.headers
    async with client.request("TRACE", "/api/users/1") as refused:
        assert refused.status == 405
        assert "Server" not in refused.headers
