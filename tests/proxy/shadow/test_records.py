"""Capture lines and HAR 1.2: written, read back, told apart, and refused with a place."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pytest

from proxy.shadow.model import Answer
from proxy.shadow.records import Recorded, RecordError, from_line, read_records, to_har, to_line

if TYPE_CHECKING:
    from pathlib import Path

GET = Recorded(
    at=1765000000.5,
    route="events-list",
    method="GET",
    target="/api/events?page=2&q=a%20b",
    headers=(("Host", "club.example"), ("Authorization", "redacted:0123456789ab")),
    answer=Answer(
        status=200,
        headers=(
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ),
        body='{"title": "Йога"}'.encode(),
        latency=0.0125,
    ),
)
POST = Recorded(
    at=1765000001.25,
    route=None,
    method="POST",
    target="/upload",
    headers=(("Host", "club.example"), ("Content-Type", "application/octet-stream")),
    body=b"\xff\x00binary",
    body_truncated=True,
)


@pytest.mark.parametrize("record", [GET, POST], ids=["get-with-answer", "binary-post"])
def test_a_capture_line_reads_back_the_same(record: Recorded) -> None:
    line = to_line(record)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert from_line(line) == record


def test_har_round_trip_keeps_every_request(tmp_path: Path) -> None:
    path = tmp_path / "out.har"
    path.write_text(json.dumps(to_har([GET, POST]), indent=2))
    har = json.loads(path.read_text())
    assert har["log"]["version"] == "1.2"
    assert (
        har["log"]["entries"][0]["request"]["url"]
        == "http://club.example/api/events?page=2&q=a%20b"
    )
    assert har["log"]["entries"][0]["request"]["queryString"] == [
        {"name": "page", "value": "2"},
        {"name": "q", "value": "a b"},
    ]
    back = list(read_records(path))
    assert back[0] == GET
    # HAR has no "truncated" flag for a request body.
    assert back[1] == dataclasses.replace(POST, body_truncated=False)


def test_a_browser_har_is_read(tmp_path: Path) -> None:
    # What Chromium's devtools save: HTTP/2 pseudo-headers, no Host header.
    entry = {
        "startedDateTime": "2026-12-08T10:00:00.000Z",
        "time": 12.5,
        "request": {
            "method": "get",
            "url": "https://club.example/api/events/1",
            "headers": [
                {"name": ":authority", "value": "club.example"},
                {"name": "accept", "value": "*/*"},
            ],
        },
        "response": {
            "status": 200,
            "headers": [],
            "content": {"text": "e30=", "encoding": "base64"},
        },
    }
    path = tmp_path / "browser.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": [entry]}}))
    [record] = read_records(path)
    assert (record.method, record.target, record.host) == ("GET", "/api/events/1", "club.example")
    assert record.headers == (("Host", "club.example"), ("accept", "*/*"))
    assert record.answer is not None
    assert (record.answer.body, record.answer.latency) == (b"{}", 0.0125)


def test_a_capture_file_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(to_line(GET) + b"\n" + to_line(POST))
    assert list(read_records(path)) == [GET, POST]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b'{"request": {"method": "GET", "target": "/"}}\nnot json\n', ":2: not a capture record"),
        (b'{"log": {"entries": [{"request": {}}]}}', "HAR entry 0"),
        (b"[1, 2]", "not a HAR file: no log.entries"),
        (b"garbage", "not a HAR file"),
    ],
    ids=["bad-second-line", "har-entry-without-url", "a-list", "garbage"],
)
def test_unreadable_input_names_the_file_and_place(
    tmp_path: Path, content: bytes, where: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    with pytest.raises(RecordError) as caught:
        list(read_records(path))
    assert str(path) in str(caught.value)
    assert where in str(caught.value)
