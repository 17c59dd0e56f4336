"""`club-proxy check` and the in-process app factory."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
from aiohttp import web

from proxy.errors import AppFactoryError
from proxy.routing.model import NewTarget
from proxy.routing.table import load_routes
from proxy.serving.check import check_report, check_routes, run_check
from proxy.webpath.appfactory import build_new_app, load_factory, missing_new_routes
from tests.proxy import newapp_sample

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "tests.proxy.newapp_sample:create_app"


def routes_file(tmp_path: Path, routes: str, *, app: str = SAMPLE, extra_new: str = "") -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            upstreams: {{legacy: {{url: "http://127.0.0.1:8080"}}}}
            new: {{app: "{app}"{extra_new}}}
            default: legacy
            routes:
            """
        )
        + textwrap.dedent(routes),
        encoding="utf-8",
    )
    return path


def test_repo_routes_yaml_passes() -> None:
    out = io.StringIO()
    assert run_check(ROOT / "routes.yaml", out=out) == 0
    text = out.getvalue()
    assert "syntax is ok" in text
    assert "test is successful" in text
    assert "[error]" not in text


def test_every_new_route_handled(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        """\
        - {id: user, match: "GET /api/users/{uid}", to: new}
        - {id: reg, match: "POST /api/events/{id}/registrations", to: new}
        - {id: any, match: "/api/state", to: new}
        - {id: old, match: "GET /api/other", to: legacy}
        """,
    )
    out = io.StringIO()
    assert check_routes(path) == []
    assert run_check(path, out=out) == 0
    assert "4 routes (3 to new)" in out.getvalue()


def test_new_routes_without_handlers_are_reported(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        """\
        - {id: user, match: "GET,PUT /api/users/{id}", to: new}
        - {id: gone, match: "GET /api/nothing", to: new}
        - {id: split, match: "GET /api/split", to: legacy, canary: {to: new, weight: 0.1}}
        - {id: methodless, match: "/api/missing/{x*}", to: new}
        """,
    )
    assert check_routes(path) == [
        (
            f"{path}:6: routes[0].to: route 'user' sends PUT /api/users/{{id}} to new, "
            f"but the new app ({SAMPLE}) has no handler for it"
        ),
        (
            f"{path}:7: routes[1].to: route 'gone' sends GET /api/nothing to new, "
            f"but the new app ({SAMPLE}) has no handler for it"
        ),
        (
            f"{path}:8: routes[2].canary.to: route 'split' sends GET /api/split to new, "
            f"but the new app ({SAMPLE}) has no handler for it"
        ),
        (
            f"{path}:9: routes[3].to: route 'methodless' sends every method /api/missing/{{x*}} "
            f"to new, but the new app ({SAMPLE}) has no handler for it"
        ),
    ]
    out = io.StringIO()
    assert run_check(path, out=out) == 1
    assert out.getvalue().count("[error]") == 4
    assert "test failed" in out.getvalue()


def test_unloadable_factory_is_an_error_when_new_is_used(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        '- {id: user, match: "GET /api/users/{id}", to: new}\n',
        app="tests.proxy.no_such_module:create_app",
    )
    [error] = check_routes(path)
    assert error.startswith(f"{path}:3: new.app: app 'tests.proxy.no_such_module:create_app'")
    assert "cannot import module 'tests.proxy.no_such_module'" in error


def test_unloadable_factory_is_a_warning_while_unused(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        '- {id: user, match: "GET /api/users/{id}", to: legacy}\n',
        app="tests.proxy.no_such_module:create_app",
    )
    report = check_report(path)
    assert report.errors == []
    assert len(report.warnings) == 1
    assert "no route uses new yet" in report.warnings[0]
    out = io.StringIO()
    assert run_check(path, out=out) == 0
    assert "[warn]" in out.getvalue()


def test_factory_returning_something_else(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        '- {id: user, match: "GET /api/users/{id}", to: new}\n',
        app="tests.proxy.newapp_sample:not_an_app",
    )
    [error] = check_routes(path)
    assert "the factory returned str, not an aiohttp Application" in error


def test_invalid_file_lists_every_problem(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        """\
        - {id: a, match: "GET /a", to: nowhere}
        - {id: b, match: "GET /b", to: legacy, shadow: {to: legacy}}
        """,
    )
    problems = check_routes(path)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:6", f"{path}:7"]
    out = io.StringIO()
    assert run_check(path, out=out) == 1
    assert "syntax is ok" not in out.getvalue()


def test_every_problem_in_one_canary_is_listed(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        """\
        - id: a
          match: "GET /a"
          to: legacy
          canary: {to: neww, weight: 1.5, sticky: "hdr:Authorization"}
        """,
    )
    problems = check_routes(path)
    assert [p.split(": ")[:2] for p in problems] == [
        [f"{path}:9", "routes[0].canary.to"],
        [f"{path}:9", "routes[0].canary.weight"],
        [f"{path}:9", "routes[0].canary.sticky"],
    ]


def test_missing_config_dir(tmp_path: Path) -> None:
    path = routes_file(
        tmp_path,
        '- {id: user, match: "GET /api/users/{id}", to: new}\n',
        extra_new=', config_dir: "no-such-dir"',
    )
    [error] = check_routes(path)
    assert "config_dir" in error
    assert "is not a directory" in error


def legacy_config(directory: Path) -> Path:
    directory.mkdir()
    (directory / "settings.toml").write_text(
        'MAX_TRANSACTION_TIME = 3.0\nREDIS_URL = "redis://127.0.0.1:6399/0"\n', encoding="utf-8"
    )
    (directory / "pg.toml").write_text(
        '[club]\ndsn = "postgresql://u@127.0.0.1:5999/club"\n', encoding="utf-8"
    )
    (directory / "info.toml").write_text('name = "club-api"\n', encoding="utf-8")
    return directory


def test_factory_gets_legacy_settings_from_config_dir(tmp_path: Path) -> None:
    legacy_config(tmp_path / "config")
    path = routes_file(
        tmp_path,
        '- {id: user, match: "GET /api/users/{id}", to: new}\n',
        extra_new=', config_dir: "config"',
    )
    assert check_routes(path) == []
    table = load_routes(path)
    assert table.new is not None
    app = build_new_app(table.new)
    settings = app[newapp_sample.SETTINGS_SEEN]
    assert settings.databases["club"].dsn == "postgresql://u@127.0.0.1:5999/club"  # type: ignore[attr-defined]
    assert settings.max_transaction_time == 3.0  # type: ignore[attr-defined]


def test_factory_without_config_dir_gets_no_arguments() -> None:
    app = build_new_app(NewTarget(app=SAMPLE))
    assert isinstance(app, web.Application)
    assert app[newapp_sample.SETTINGS_SEEN] is None
    assert app[newapp_sample.STATE] == {"started": False, "stopped": False}  # built, not started


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "is not of the form 'package.module:factory'"),
        ("tests.proxy.newapp_sample:missing", "has no attribute 'missing'"),
        ("tests.proxy.newapp_sample:STATE", "is not callable"),
    ],
)
def test_load_factory_errors(spec: str, message: str) -> None:
    with pytest.raises(AppFactoryError, match=message):
        load_factory(spec)


def test_build_new_app_needs_an_app(tmp_path: Path) -> None:
    with pytest.raises(AppFactoryError, match="out-of-process url target"):
        build_new_app(NewTarget())


def test_missing_new_routes_messages(tmp_path: Path) -> None:
    path = routes_file(tmp_path, '- {id: gone, match: "DELETE /api/users/{id}", to: new}\n')
    table = load_routes(path)
    app = newapp_sample.create_app()
    assert missing_new_routes(app, table.routes) == [
        (
            "line 6: route 'gone' sends DELETE /api/users/{id} to new, "
            "but the new app has no handler for it"
        )
    ]


def test_handlers_in_sub_apps_are_found(tmp_path: Path) -> None:
    path = routes_file(tmp_path, '- {id: sub, match: "GET /v2/api/users/{id}", to: new}\n')
    table = load_routes(path)
    app = web.Application()
    app.add_subapp("/v2", newapp_sample.create_app())
    assert missing_new_routes(app, table.routes) == []
