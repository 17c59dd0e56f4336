"""`club-proxy run` refuses to start on what `club-proxy check` rejects, as nginx does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from proxy.__main__ import main

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(30)  # without the check, `run` would serve until killed
def test_run_refuses_a_route_to_new_the_new_app_cannot_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unused_tcp_port_factory: Any
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "version: 1\n"
        'upstreams: {legacy: {url: "http://127.0.0.1:9"}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: users, match: "GET /api/users/{id}", to: new}\n'
        '  - {id: orders, match: "GET /api/orders/{id}", to: new}\n',
        encoding="utf-8",
    )
    port = str(unused_tcp_port_factory())
    assert main(["run", "--routes", str(routes), "--port", port, "--admin-port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"club-proxy: {routes}:7: routes[1].to: route 'orders' sends GET" in err
    assert "users" not in err
