"""routes.yaml upstream URLs from the environment: `${NAME}` and `${NAME:-default}`."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
from yarl import URL

from proxy.errors import RoutesError
from proxy.routing.table import load_routes
from proxy.serving.check import run_check

ROOT = Path(__file__).resolve().parents[2]
VAR = "CLUB_TEST_ROUTES_URL"


def routes(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "routes.yaml"
    text = f"""\
        version: 1
        upstreams:
          legacy:
            url: "{url}"
        default: legacy
        """
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_default_applies_when_the_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    table = load_routes(routes(tmp_path, f"${{{VAR}:-http://127.0.0.1:8080}}"))
    assert table.upstreams["legacy"].url == URL("http://127.0.0.1:8080")


@pytest.mark.parametrize("default", [":-http://127.0.0.1:8080", ""])
def test_the_variable_wins_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default: str
) -> None:
    monkeypatch.setenv(VAR, "http://10.1.2.3:18080/")
    table = load_routes(routes(tmp_path, f"${{{VAR}{default}}}"))
    assert table.upstreams["legacy"].url == URL("http://10.1.2.3:18080")


def test_an_empty_variable_takes_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the shell and docker-compose: `:-` covers unset and empty.
    monkeypatch.setenv(VAR, "")
    table = load_routes(routes(tmp_path, f"${{{VAR}:-http://127.0.0.1:8081}}"))
    assert table.upstreams["legacy"].url == URL("http://127.0.0.1:8081")


def test_part_of_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "club-api")
    table = load_routes(routes(tmp_path, f"http://${{{VAR}}}:${{CLUB_TEST_UNSET_PORT:-8080}}"))
    assert table.upstreams["legacy"].url == URL("http://club-api:8080")


@pytest.mark.parametrize(
    ("url", "value", "message"),
    [
        (f"${{{VAR}}}", None, f"environment variable {VAR} is not set"),
        (f"${{{VAR}}}", "not a url", "'not a url' (from '${CLUB_TEST_ROUTES_URL}') must be"),
        (f"${{{VAR}:-ftp://x}}", None, "'ftp://x' (from"),
        (f"${{{VAR}:=http://x}}", None, "unsupported '$' in url"),
        ("$CLUB_TEST_ROUTES_URL", "http://x", "unsupported '$' in url"),
        ("${}", None, "unsupported '$' in url"),
        (f"${{{VAR}", None, "unsupported '$' in url"),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    value: str | None,
    message: str,
) -> None:
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    path = routes(tmp_path, url)
    with pytest.raises(RoutesError) as info:
        load_routes(path)
    text = str(info.value)
    assert f"{path}:4: upstreams.legacy.url: " in text, text
    assert message in text, text


def test_check_reports_an_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    path = routes(tmp_path, f"${{{VAR}}}")
    out = io.StringIO()
    assert run_check(path, out=out) == 1
    text = out.getvalue()
    assert f"[error] {path}:4: upstreams.legacy.url: environment variable {VAR} is not set" in text


def test_repo_routes_yaml_takes_club_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUB_API_URL", raising=False)
    assert load_routes(ROOT / "routes.yaml").upstreams["legacy"].url == URL("http://127.0.0.1:8080")
    monkeypatch.setenv("CLUB_API_URL", "http://127.0.0.1:18123")
    table = load_routes(ROOT / "routes.yaml")
    assert table.upstreams["legacy"].url == URL("http://127.0.0.1:18123")
