"""The access line written to a stream is valid JSON whatever the client sent.

`AccessLog.log` formats the stream line directly (no dict, no orjson for the
checked tokens); the client's path and query are the fields it must escape.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from proxy.telemetry.accesslog import AccessLog, JsonFormatter


def _lines(**fields: object) -> list[dict[str, object]]:
    stream = io.BytesIO()
    log = AccessLog(stream=stream)
    log.log(
        request_id="rid-1",
        route="users.get",
        target="legacy",
        method="GET",
        status=200,
        body_bytes=12,
        seconds=0.0012345,
        **fields,  # type: ignore[arg-type]
    )
    log.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("raw_target", "path", "query"),
    [
        ("/plain", "/plain", ""),
        ('/q"uote\\back/../x', '/q"uote\\back/../x', ""),
        ("/ctl\x01\x7f/é", "/ctl\x01\x7f/é", ""),
        ('/a?b="c"&token=s3cret&d=\\', "/a", 'b="c"&token=[redacted]&d=\\'),
        ("/a?", "/a", ""),
        # Bytes no parser should pass, decoded with surrogateescape: still a line.
        ("/a\udcffb?q=\udcfe", "/a\udcffb", "q=\udcfe"),
    ],
)
def test_the_line_is_json_with_the_path_and_query_as_sent(
    raw_target: str, path: str, query: str
) -> None:
    (line,) = _lines(raw_target=raw_target)
    assert line["path"] == path
    assert line["query"] == query
    assert line["duration_ms"] == 1.234
    assert line["event"] == "proxy.access"
    assert "aborted" not in line


def test_a_cut_answer_says_why() -> None:
    (line,) = _lines(raw_target="/x", aborted="upstream")
    assert line["aborted"] == "upstream"
    assert line["route"] == "users.get"
    assert line["request_id"] == "rid-1"


def test_a_log_record_with_a_lone_surrogate_is_still_a_json_line() -> None:
    record = logging.LogRecord("proxy", logging.WARNING, __file__, 1, "proxy.bad_request", (), None)
    record.detail = "b'\udcff'"
    line = json.loads(JsonFormatter().format(record))
    assert line["detail"] == "b'\udcff'"
