"""README commands and example outputs match what the code does (issue 17 item 8)."""

from __future__ import annotations

import json
import re
import subprocess

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
CLUB_README = (ROOT / "examples" / "club_api" / "README.md").read_text(encoding="utf-8")


def test_make_check_runs_the_venv_club_proxy() -> None:
    dry = subprocess.run(
        ["make", "-n", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ".venv/bin/club-proxy check routes.yaml" in dry.stdout


def test_readme_never_runs_a_bare_club_proxy_check() -> None:
    # `make run` does not put club-proxy on PATH: a command to type says where it is.
    bare = re.findall(r"(?<![/\w])`club-proxy check routes\.yaml`", README.split("## Pointing")[0])
    assert bare == []


def test_websocket_frames_are_shown_as_the_server_sends_them() -> None:
    # aiohttp's send_json: json.dumps, spaces after ':' and ','.
    hello = json.dumps({"type": "hello", "user_id": 2})
    assert f"# {hello}" in CLUB_README
    assert '{"type":"hello"' not in CLUB_README
    assert '{"type":"new_registration"' not in CLUB_README
    assert '{"type":"direct_message"' not in CLUB_README


def test_users_page_example_is_the_default_seed() -> None:
    # Seed 42 numbers users from 1 and keeps 1..10 active: offset 10 of the active ones is 11.
    assert '# {"items":[{"id":11,' in CLUB_README
