"""routes.yaml loading (values, errors with file:line:key) and matching."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import textwrap
from pathlib import Path

import pytest
from yarl import URL

from proxy.errors import RoutesError
from proxy.routing._paths import normalise
from proxy.routing.model import NEW, StickyKind
from proxy.routing.table import RouteTable, load_routes

ROOT = Path(__file__).resolve().parents[2]

HEADER = """\
version: 1
upstreams:
  legacy: {url: "http://127.0.0.1:8080"}
  billing: {url: "http://127.0.0.1:8090"}
new: {app: "tests.proxy.newapp_sample:create_app"}
default: legacy
"""


def write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def table_with(tmp_path: Path, routes: str) -> RouteTable:
    return load_routes(write(tmp_path, HEADER + "routes:\n" + textwrap.dedent(routes)))


def load_error(tmp_path: Path, text: str) -> RoutesError:
    with pytest.raises(RoutesError) as info:
        load_routes(write(tmp_path, text))
    return info.value


# --- loading: values -----------------------------------------------------------------


def test_full_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        upstreams:
          legacy:
            url: "http://127.0.0.1:8080/"
            connect_timeout: 500ms
            read_timeout: 1.5m
            max_connections: 64
            keepalive_timeout: 4
            ws_max_message_size: 8MiB
        new: {app: "pkg.mod:make", config_dir: "conf"}
        default: legacy
        routes:
          - {id: a, match: "GET /api/users/{id}", to: new}
          - id: b
            match: "get, post /api/events/{id}/registrations"
            to: legacy
            canary: {to: new, weight: 0.25, sticky: "cookie:uid"}
            timeouts: {connect: 1s, read: 250ms}
          - {id: c, match: "/static/{rest*}", to: legacy}
        """,
    )
    table = load_routes(path)
    legacy = table.upstreams["legacy"]
    assert legacy.url == URL("http://127.0.0.1:8080")
    assert (legacy.connect_timeout, legacy.read_timeout) == (0.5, 90.0)
    assert (legacy.max_connections, legacy.keepalive_timeout) == (64, 4.0)
    assert legacy.ws_max_message_size == 8 * 2**20
    assert table.new is not None
    assert table.new.app == "pkg.mod:make"
    assert table.new.config_dir == (tmp_path / "conf").resolve()  # relative to the file
    assert table.default == "legacy"
    assert table.targets == {"legacy", NEW}
    assert table.uses_new
    a, b, c = table.routes
    assert (a.id, a.methods, a.path, a.to, a.line) == (
        "a",
        frozenset({"GET"}),
        "/api/users/{id}",
        NEW,
        13,
    )
    assert b.methods == {"GET", "POST"}  # case and spaces normalised
    assert b.canary is not None
    assert (b.canary.to, b.canary.weight) == (NEW, 0.25)
    assert b.canary.sticky is not None
    assert (b.canary.sticky.kind, b.canary.sticky.name) == (StickyKind.COOKIE, "uid")
    assert (b.timeouts.connect, b.timeouts.read) == (1.0, 0.25)
    assert b.line == 14
    assert c.methods == frozenset()  # method-less: every method
    assert table.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table.source == path
    json.dumps(table.as_dict())  # the admin API can serve it as is


def test_upstream_defaults_and_new_url(tmp_path: Path) -> None:
    table = load_routes(
        write(
            tmp_path,
            """\
            version: 1
            upstreams: {legacy: {url: "https://legacy.internal:8443"}}
            new: {url: "http://127.0.0.1:9000"}
            default: new
            """,
        )
    )
    legacy = table.upstreams["legacy"]
    assert (legacy.connect_timeout, legacy.read_timeout, legacy.max_connections) == (2.0, 30.0, 100)
    assert table.new is not None
    assert table.new.url == URL("http://127.0.0.1:9000")
    assert table.new.app is None
    assert table.routes == ()
    assert table.match("GET", "/anything").target == NEW
    assert table.uses_new  # through the default


def test_shadow_values_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + """\
routes:
  - id: events
    match: "GET /api/events"
    to: legacy
    shadow:
      to: new
      sample: 0.2
      sticky: "header:Authorization"
      ignore: {headers: [X-Trace], json: ["$.items[*].updated_at", "$..etag"]}
      unordered: ["$.items"]
      noise: 0.05
      max_body: 64KiB
      timeout: 1500ms
      verdict: {min_requests: 50, min_match: 0.99}
      redact: {headers: [X-Api-Key], json: ["$.email"]}
  - {id: users, match: "GET /api/users/{id}", to: new, shadow: {to: legacy}}
shadow_store: {dsn: "postgresql://app:secret@127.0.0.1/shadow", retention: 2d}
""",
    )
    table = load_routes(path)
    events, users = (route.shadow for route in table.routes)
    assert events is not None
    assert users is not None
    assert (events.to, events.sample, events.noise, events.max_body, events.timeout) == (
        NEW,
        0.2,
        0.05,
        64 * 1024,
        1.5,
    )
    assert events.sticky is not None
    assert (events.sticky.kind, events.sticky.name) == (StickyKind.HEADER, "Authorization")
    assert events.ignore_headers == {"x-trace"}
    assert events.ignore_json == ("$.items[*].updated_at", "$..etag")
    assert events.unordered == ("$.items",)
    assert (events.verdict.min_requests, events.verdict.min_match) == (50, 0.99)
    assert (events.redact_headers, events.redact_json) == (frozenset({"x-api-key"}), ("$.email",))
    # The reverse shadow of a cut-over route, with every default.
    assert (users.to, users.sample, users.noise, users.max_body, users.timeout) == (
        "legacy",
        1.0,
        0.1,
        1024 * 1024,
        5.0,
    )
    assert table.shadows == {"events": events, "users": users}
    assert table.shadow_store is not None
    assert table.shadow_store.retention == 2 * 86400
    described = table.as_dict()
    assert described["shadow_store"]["dsn"] == "postgresql://app:***@127.0.0.1/shadow"
    assert described["routes"][0]["shadow"]["ignore"]["json"] == list(events.ignore_json)


def test_every_problem_in_one_shadow_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + """\
routes:
  - id: events
    match: "GET /api/events"
    to: legacy
    shadow:
      to: neww
      sample: 1.5
      sticky: "hdr:Authorization"
      ignore: {json: ["items", "$.ok"]}
      verdict: {min_requests: 0, min_match: 2}
""",
    )
    with pytest.raises(RoutesError) as info:
        load_routes(path)
    keys = [error.key for error in info.value.errors]
    assert keys == [
        "routes[0].shadow.to",
        "routes[0].shadow.sample",
        "routes[0].shadow.sticky",
        "routes[0].shadow.ignore.json[0]",
        "routes[0].shadow.verdict.min_requests",
        "routes[0].shadow.verdict.min_match",
    ]


def test_every_problem_in_one_canary_is_reported(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        HEADER
        + "routes:\n"
        + '  - {id: a, match: "GET /a", to: legacy,\n'
        + '     canary: {to: neww, weight: 1.5, sticky: "hdr:Authorization"}}\n'
        + '  - {id: b, match: "GET /b", to: legacy, canary: {to: legacy, weight: -1}}\n',
    )
    assert [(e.line, e.key) for e in error.errors] == [
        (9, "routes[0].canary.to"),
        (9, "routes[0].canary.weight"),
        (9, "routes[0].canary.sticky"),
        (10, "routes[1].canary.to"),
        (10, "routes[1].canary.weight"),
    ]
    messages = [e.message for e in error.errors]
    assert "unknown target 'neww'" in messages[0]
    assert "weight must be between 0 and 1, not 1.5" in messages[1]
    assert "sticky must be" in messages[2]
    assert "the same target as the route" in messages[3]


def test_table_is_immutable(tmp_path: Path) -> None:
    table = table_with(tmp_path, '  - {id: a, match: "GET /a", to: legacy}\n')
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.default = "billing"  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.upstreams["x"] = table.upstreams["legacy"]  # type: ignore[index]


def test_repo_routes_yaml_loads() -> None:
    table = load_routes(ROOT / "routes.yaml")
    assert table.default == "legacy"
    assert table.new is not None
    assert table.new.config_dir == ROOT / "examples" / "club_api" / "app" / "config"
    assert table.match("GET", "/api/users/5").route.id == "user-get"  # type: ignore[union-attr]
    assert table.match("GET", "/api/users/5").target == "new"  # the cutover example has moved it
    assert table.match("DELETE", "/api/events/5/registrations/me").target == "legacy"
    canary = table.match("POST", "/api/events/5/registrations").route
    assert canary is not None
    assert canary.canary is not None
    assert canary.canary.to == "new"
    assert table.match("GET", "/not/listed").route is None
    assert table.uses_new


# --- loading: errors -----------------------------------------------------------------

ERROR_CASES = [
    # (routes section or whole file, line, key, text in the message)
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: legacy}}\n',
        8,
        "routes[0].shadow.to",
        "same target as the route",
        id="shadow-to-itself",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: nope}}\n',
        8,
        "routes[0].shadow.to",
        "unknown target 'nope'",
        id="shadow-unknown-target",
    ),
    pytest.param(
        '  - {id: a, match: "POST /a", to: legacy, shadow: {to: new}}\n',
        8,
        "routes[0].shadow",
        "only GET, HEAD and OPTIONS are shadowed",
        id="shadow-writes-only",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: new, sample: 2}}\n',
        8,
        "routes[0].shadow.sample",
        "between 0 and 1",
        id="shadow-sample-range",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: new, ignore: {json: ["items"]}}}\n',
        8,
        "routes[0].shadow.ignore.json[0]",
        "must start with '$'",
        id="shadow-json-path",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: new, timeout: 0s}}\n',
        8,
        "routes[0].shadow.timeout",
        "positive duration",
        id="shadow-timeout-zero",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, shadow: {to: new, mirror: 1}}\n',
        8,
        "routes[0].shadow.mirror",
        "",
        id="shadow-unknown-key",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, priority: 2}\n',
        8,
        "routes[0].priority",
        "unknown key 'priority'",
        id="unknown-route-key",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legcy}\n',
        8,
        "routes[0].to",
        "unknown target 'legcy' (targets: billing, legacy, new)",
        id="unknown-target",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy}\n  - {id: a, match: "GET /b", to: legacy}\n',
        9,
        "routes[1]",
        "duplicate route id 'a' (first at line 8)",
        id="duplicate-id",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/{id}", to: legacy}\n'
        '  - {id: b, match: "GET,POST /u/{name}", to: new}\n',
        9,
        "routes[1].match",
        "route 'b' is ambiguous with route 'a' (line 8): both match GET /u/{}",
        id="ambiguous-params",
    ),
    pytest.param(
        '  - {id: a, match: "/u", to: legacy}\n  - {id: b, match: "/u", to: new}\n',
        9,
        "routes[1].match",
        "both match every method /u",
        id="ambiguous-methodless",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, timeouts: {read: 2 sec}}\n',
        8,
        "routes[0].timeouts.read",
        "'2 sec' is not a duration",
        id="bad-duration",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, timeouts: {read: 0s}}\n',
        8,
        "routes[0].timeouts.read",
        "must be a positive duration",
        id="zero-duration",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, canary: {to: new, weight: 1.5}}\n',
        8,
        "routes[0].canary.weight",
        "weight must be between 0 and 1",
        id="weight-range",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, canary: {to: legacy, weight: 0.1}}\n',
        8,
        "routes[0].canary.to",
        "the same target as the route",
        id="canary-same-target",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a", to: legacy, canary: {to: new, weight: 0.1, sticky: "query:x"}}\n',
        8,
        "routes[0].canary.sticky",
        "sticky must be 'header:NAME' or 'cookie:NAME'",
        id="bad-sticky",
    ),
    pytest.param(
        '  - {id: a, match: "GET", to: legacy}\n',
        8,
        "routes[0].match",
        "is not 'METHOD[,METHOD] /path' or '/path'",
        id="match-without-path",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/{id:\\\\d+}", to: legacy}\n',
        8,
        "routes[0].match",
        "regular expressions are not supported",
        id="regex-param",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/{rest*}/x", to: legacy}\n',
        8,
        "routes[0].match",
        "must be the last segment",
        id="tail-not-last",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/x{id}", to: legacy}\n',
        8,
        "routes[0].match",
        "a parameter must be a whole segment",
        id="partial-segment-param",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/../x", to: legacy}\n',
        8,
        "routes[0].match",
        "must be canonical",
        id="dot-segment-in-pattern",
    ),
    pytest.param(
        '  - {id: a, match: "GET /u/{id}/{id}", to: legacy}\n',
        8,
        "routes[0].match",
        "uses the parameter {id} twice",
        id="duplicate-param",
    ),
    pytest.param(
        '  - {id: "a b", match: "GET /a", to: legacy}\n',
        8,
        "routes[0].id",
        "invalid id 'a b'",
        id="bad-id",
    ),
    pytest.param(
        '  - id: a\n    match: "GET /a"\n    match: "GET /b"\n    to: legacy\n',
        10,
        "routes[0].match",
        "duplicate key 'match'",
        id="duplicate-key",
    ),
    pytest.param(
        '  - {id: a, match: "GET /a"}\n',
        8,
        "routes[0]",
        "missing required key 'to'",
        id="missing-to",
    ),
    pytest.param(
        "  - [GET, /a]\n",
        8,
        "routes[0]",
        "must be a mapping, not a list",
        id="route-not-mapping",
    ),
]


@pytest.mark.parametrize(("routes", "line", "key", "text"), ERROR_CASES)
def test_route_errors_name_file_line_and_key(
    tmp_path: Path, routes: str, line: int, key: str, text: str
) -> None:
    path = write(tmp_path, HEADER + "routes:\n" + routes)
    with pytest.raises(RoutesError) as info:
        load_routes(path)
    error = info.value
    assert (error.path, error.line, error.key) == (path, line, key)
    assert text in error.message
    assert str(error).startswith(f"{path}:{line}: {key}: ")


FILE_ERROR_CASES = [
    # (whole file, line, key, text in the message)
    pytest.param(
        "version: 2\nupstreams: {}\ndefault: new\nnew: {url: 'http://127.0.0.1:1'}\n",
        1,
        "version",
        "unsupported schema version 2",
        id="version",
    ),
    pytest.param(
        "version: 1\nupstreams: {legacy: {url: 'http://h'}}\n",
        1,
        None,
        "missing required key 'default'",
        id="missing-default",
    ),
    pytest.param(
        "version: 1\nupstreams: {legacy: {url: 'http://h'}}\ndefault: legacy\nlisten: 80\n",
        4,
        "listen",
        "unknown key 'listen'",
        id="unknown-top-key",
    ),
    pytest.param(
        "version: 1\nupstreams: {legacy: {url: 'http://h'}}\ndefault: new\n",
        3,
        "default",
        "target 'new' needs a top-level 'new:' section",
        id="new-without-section",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h/api'}\ndefault: legacy\n",
        3,
        "upstreams.legacy.url",
        "must be only scheme://host[:port]",
        id="url-with-path",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'ftp://h'}\ndefault: legacy\n",
        3,
        "upstreams.legacy.url",
        "must be http:// or https://",
        id="url-scheme",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  new: {url: 'http://h'}\ndefault: new\n",
        3,
        "upstreams.new",
        "invalid upstream name 'new'",
        id="upstream-named-new",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h', max_connections: true}\ndefault: legacy\n",
        3,
        "upstreams.legacy.max_connections",
        "must be an integer, not a boolean",
        id="bool-is-not-int",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h', ws_max_message_size: 4 MiBs}\n"
        "default: legacy\n",
        3,
        "upstreams.legacy.ws_max_message_size",
        "is not a size",
        id="bad-size",
    ),
    pytest.param(
        "version: 1\nupstreams: {}\nnew: {app: 'm:f', url: 'http://h'}\ndefault: new\n",
        3,
        "new",
        "give exactly one of 'app'",
        id="new-app-and-url",
    ),
    pytest.param(
        "version: 1\nupstreams: {}\nnew: {app: 'not a spec'}\ndefault: new\n",
        3,
        "new.app",
        "must look like 'package.module:factory'",
        id="new-app-spec",
    ),
    pytest.param(
        "version: 1\nupstreams: [legacy]\ndefault: legacy\n",
        2,
        "upstreams",
        "must be a mapping, not a list",
        id="upstreams-list",
    ),
    # YAML syntax errors name the line of the broken construct, not the
    # line of the next token, where PyYAML noticed it.
    pytest.param(
        "version: 1\nupstreams: {legacy: {url: 'http://h'}\ndefault: legacy\n",
        2,
        None,
        "invalid YAML",
        id="yaml-unclosed-flow-mapping",
    ),
    pytest.param(
        "version: 1\nupstreams: {legacy: {url: 'http://h'}\n\n# a comment\n\ndefault: legacy\n",
        2,
        None,
        "flow mapping that starts on this line (noticed at line 6",
        id="yaml-unclosed-flow-mapping-far",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h'}\ndefault: legacy\nroutes: [a, b\n",
        5,
        None,
        "flow sequence",
        id="yaml-unclosed-flow-sequence",
    ),
    pytest.param(
        'version: 1\ndefault: "legacy\nroutes: []\n',
        2,
        None,
        "quoted scalar",
        id="yaml-unclosed-quote",
    ),
    pytest.param(
        "version: 1\nupstreams\ndefault: legacy\n",
        2,
        None,
        "expected ':'",
        id="yaml-key-without-colon",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h'}\n billing: {url: 'http://b'}\n",
        4,
        None,
        "invalid YAML",
        id="yaml-bad-indent-less",
    ),
    pytest.param(
        "version: 1\nupstreams:\n  legacy: {url: 'http://h'}\n    billing: {url: 'http://b'}\n",
        4,
        None,
        "invalid YAML",
        id="yaml-bad-indent-more",
    ),
    pytest.param(
        "version: 1\nupstreams:\n\tlegacy: {url: 'http://h'}\ndefault: legacy\n",
        3,
        None,
        "a tab cannot indent YAML",
        id="yaml-tab",
    ),
    pytest.param("", 0, None, "the file is empty", id="empty"),
    pytest.param("- 1\n- 2\n", 1, None, "must be a mapping, not a list", id="top-list"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), FILE_ERROR_CASES)
def test_file_errors(tmp_path: Path, text: str, line: int, key: str | None, message: str) -> None:
    error = load_error(tmp_path, text)
    assert (error.line, error.key) == (line, key)
    assert message in error.message


def test_every_problem_is_reported(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        HEADER
        + "routes:\n"
        + '  - {id: a, match: "GET /a", to: nowhere}\n'
        + '  - {id: b, match: "GET /b", to: legacy, canary: {to: new, weight: 2}}\n'
        + '  - {id: c, match: "GET /c", to: legacy}\n'
        + '  - {id: d, match: "GET /c", to: new}\n',
    )
    assert [(e.line, e.key) for e in error.errors] == [
        (8, "routes[0].to"),
        (9, "routes[1].canary.weight"),
        (11, "routes[3].match"),
    ]
    assert "(and 2 more problems)" in str(error)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(tmp_path / "absent.yaml")
    assert "cannot read the routes file" in str(info.value)


def test_binary_garbage_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(b"version: 1\n\x00\xff\xfe")
    with pytest.raises(RoutesError, match="invalid YAML"):
        load_routes(path)


# --- matching ------------------------------------------------------------------------

MATCH_ROUTES = """\
  - {id: users, match: "GET /api/users", to: legacy}
  - {id: user, match: "GET /api/users/{id}", to: new}
  - {id: me, match: "GET /api/users/me", to: billing}
  - {id: user-any, match: "/api/users/{id}", to: billing}
  - {id: head-only, match: "HEAD /api/users/me", to: new}
  - {id: abc, match: "GET /a/b/c", to: new}
  - {id: axd, match: "GET /a/{x}/d", to: billing}
  - {id: left, match: "GET /l/{x}/lit", to: new}
  - {id: right, match: "GET /l/lit/{y}", to: billing}
  - {id: files, match: "GET /files/{path*}", to: new}
  - {id: file-meta, match: "GET /files/{id}/meta", to: billing}
  - {id: reg, match: "POST,DELETE /api/events/{id}/registrations", to: new}
  - {id: slash, match: "GET /dir/", to: new}
  - {id: root, match: "GET /", to: billing}
  - {id: tilde, match: "GET /~club/caf%c3%a9", to: new}
"""

MATCH_CASES = [
    # (method, raw path, route id or None for the default, params)
    ("GET", "/api/users", "users", {}),  # literal route
    ("GET", "/api/users/7", "user", {"id": "7"}),  # {param}
    ("GET", "/api/users/me", "me", {}),  # literal segment beats {param}
    ("HEAD", "/api/users/me", "head-only", {}),  # explicit HEAD beats GET's implicit HEAD
    ("HEAD", "/api/users/7", "user", {"id": "7"}),  # GET answers HEAD
    ("PUT", "/api/users/7", "user-any", {"id": "7"}),  # method-less route catches the rest
    ("POST", "/api/users", None, {}),  # no route for the method: default
    ("GET", "/a/b/c", "abc", {}),
    ("GET", "/a/b/d", "axd", {"x": "b"}),  # backtracks out of the literal branch
    ("GET", "/l/lit/lit", "right", {"y": "lit"}),  # the leftmost literal decides
    ("GET", "/files/1/meta", "file-meta", {"id": "1"}),  # {param} beats {rest*}
    ("GET", "/files/a/b/c.txt", "files", {"path": "a/b/c.txt"}),
    ("GET", "/files", "files", {"path": ""}),  # {rest*} may be empty
    ("GET", "/files/", "files", {"path": ""}),
    ("DELETE", "/api/events/42/registrations", "reg", {"id": "42"}),
    ("GET", "/api/events/42/registrations", None, {}),
    ("GET", "/dir/", "slash", {}),  # a trailing slash is significant
    ("GET", "/dir", None, {}),
    ("GET", "/", "root", {}),
    ("GET", "/api/users/a%2Fb", "user", {"id": "a/b"}),  # %2F stays inside one segment
    ("GET", "/api/users/a%2fb/x", None, {}),
    ("GET", "/api/users/%6De", "me", {}),  # unreserved escapes are decoded
    ("GET", "/api/users/caf%C3%A9", "user", {"id": "café"}),  # params come back decoded
    ("GET", "/api//users///me", "me", {}),  # duplicate slashes merged
    ("GET", "/api/x/../users/./me", "me", {}),  # dot segments resolved
    ("GET", "/api/%2e%2e/api/users", "users", {}),  # encoded dots are dots
    ("GET", "/../../api/users", "users", {}),  # never above the root
    ("GET", "/api/users?x=1", "users", {}),  # a query, if passed, is ignored
    ("GET", "/%7Eclub/caf%C3%A9", "tilde", {}),  # patterns are normalised the same way
    ("GET", "/~club/café", "tilde", {}),  # raw non-ASCII is encoded as UTF-8
    ("get", "/api/users", None, {}),  # methods are case-sensitive
    ("OPTIONS", "*", None, {}),
    ("GET", "/api/users/me;v=1", "user", {"id": "me;v=1"}),  # ';' is part of the segment
]


@pytest.mark.parametrize(("method", "path", "route_id", "params"), MATCH_CASES)
def test_match(
    tmp_path: Path, method: str, path: str, route_id: str | None, params: dict[str, str]
) -> None:
    table = table_with(tmp_path, MATCH_ROUTES)
    found = table.match(method, path)
    assert (found.route.id if found.route else None) == route_id
    assert dict(found.params) == params
    expected_target = found.route.to if found.route else "legacy"
    assert found.target == expected_target


def test_match_without_routes_returns_default(tmp_path: Path) -> None:
    table = load_routes(write(tmp_path, HEADER))
    found = table.match("GET", "/x")
    assert (found.route, found.target, dict(found.params)) == (None, "legacy", {})


def test_literal_matches_are_shared_and_read_only(tmp_path: Path) -> None:
    table = table_with(tmp_path, MATCH_ROUTES)
    first = table.match("GET", "/api/users")
    assert table.match("GET", "/api/users") is first  # precomputed, no allocation
    with pytest.raises(TypeError):
        first.params["x"] = "y"  # type: ignore[index]


NORMALISE_CASES = [
    ("/plain/path", "/plain/path"),
    ("/a%2fb", "/a%2Fb"),
    ("/%41%42%7e", "/AB~"),
    ("/a%20b", "/a%20b"),
    ("/a b", "/a%20b"),
    ("/100%", "/100%25"),
    ("/%zz", "/%25zz"),
    ("//a///b", "/a/b"),
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/..", "/"),
    ("/.hidden/x", "/.hidden/x"),
    ("/a/%2E%2E/b", "/b"),
    ("/caf\u00e9", "/caf%C3%A9"),
    ("/raw\udcff", "/raw%FF"),  # a byte aiohttp could not decode comes back as that byte
    ("/lone\ud800", "/lone%ED%A0%80"),  # never an exception on the request path
]


@pytest.mark.parametrize(("raw", "canonical"), NORMALISE_CASES)
def test_normalise(raw: str, canonical: str) -> None:
    assert normalise(raw) == canonical


def test_matching_never_fails_and_normalising_is_idempotent(tmp_path: Path) -> None:
    table = table_with(tmp_path, MATCH_ROUTES)
    alphabet = ["/", "/", "%", "2", "e", "f", "F", ".", "..", "a", "b", "~", " ", "é", "?", ";"]
    rng = random.Random(6)  # deterministic
    for _ in range(5000):
        raw = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        canonical = normalise(raw)
        assert normalise(canonical) == canonical, raw
        assert canonical.startswith("/")
        assert "//" not in canonical
        assert table.match("GET", raw).target in {"legacy", "billing", NEW}
