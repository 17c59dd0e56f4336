"""Recorded exchanges: the capture file's lines, and HAR 1.2 both ways.

A capture file (`capture:` in routes.yaml) holds one JSON object per line:

    {"time": "2026-12-08T10:00:00.123Z", "route": "events-list",
     "request": {"method": "GET", "target": "/api/events?page=2",
                 "headers": [["Host", "club.example"], ...],
                 "body": "", "body_encoding": "text", "body_truncated": false},
     "response": {"status": 200, "headers": [...], "body": "...",
                  "body_encoding": "text" | "base64", "body_truncated": false},
     "latency": 0.0123}

Bodies are text when they decode as UTF-8, else base64. `club-proxy compare`
reads either such a file or a HAR 1.2 file (`read_records` tells them apart),
and `to_har` turns records into a HAR a browser's developer tools can open.
Records are written already redacted (`proxy.shadow.capture`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

from proxy.errors import ProxyError
from proxy.shadow.model import Answer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

__all__ = ["RecordError", "Recorded", "from_har", "from_line", "read_records", "to_har", "to_line"]

_HAR_VERSION: Final = "1.2"
_CREATOR: Final = {"name": "club-proxy", "version": "1"}


class RecordError(ProxyError):
    """A capture or HAR file that cannot be read (its name and line or entry say where)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """One exchange: the request, and the primary's answer when it was recorded."""

    at: float  # Unix time the request arrived
    route: str | None
    method: str
    target: str  # the raw path and query
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    body_truncated: bool = False
    answer: Answer | None = None

    @property
    def host(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "host"), "localhost")


# --- the capture file's lines ----------------------------------------------------------


def to_line(record: Recorded) -> bytes:
    """`record` as one line of a capture file, newline included."""
    request = {
        "method": record.method,
        "target": record.target,
        "headers": [list(pair) for pair in record.headers],
        **_body(record.body, truncated=record.body_truncated),
    }
    line: dict[str, Any] = {"time": _iso(record.at), "route": record.route, "request": request}
    if (answer := record.answer) is not None:
        line["response"] = {
            "status": answer.status,
            "headers": [list(pair) for pair in answer.headers],
            **_body(answer.body, truncated=answer.truncated),
        }
        line["latency"] = round(answer.latency, 6)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def from_line(line: bytes | str) -> Recorded:
    """A capture line back as a record (ValueError when it is not one)."""
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        msg = "not a capture record (no 'request' object)"
        raise ValueError(msg)  # noqa: TRY004 - one error type for every bad line
    request = data["request"]
    answer = None
    if isinstance(response := data.get("response"), dict):
        answer = Answer(
            status=int(response["status"]),
            headers=_pairs(response.get("headers", [])),
            body=_unbody(response),
            truncated=bool(response.get("body_truncated", False)),
            latency=float(data.get("latency", 0.0)),
        )
    return Recorded(
        at=_parse_time(data.get("time")),
        route=data.get("route"),
        method=str(request["method"]),
        target=str(request["target"]),
        headers=_pairs(request.get("headers", [])),
        body=_unbody(request),
        body_truncated=bool(request.get("body_truncated", False)),
        answer=answer,
    )


def _body(body: bytes, *, truncated: bool) -> dict[str, Any]:
    try:
        return {"body": body.decode(), "body_encoding": "text", "body_truncated": truncated}
    except UnicodeDecodeError:
        text = base64.b64encode(body).decode()
        return {"body": text, "body_encoding": "base64", "body_truncated": truncated}


def _unbody(part: dict[str, Any]) -> bytes:
    text = part.get("body") or ""
    if part.get("body_encoding") == "base64":
        return base64.b64decode(text, validate=True)
    return str(text).encode()


def _pairs(items: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(items, list):
        msg = "headers must be a list of [name, value] pairs"
        raise ValueError(msg)  # noqa: TRY004 - one error type for every bad line
    return tuple((str(name), str(value)) for name, value in items)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> float:
    if not text:
        return 0.0
    # Python 3.11 reads a trailing Z (browsers' HAR files have one).
    return datetime.fromisoformat(str(text)).timestamp()


# --- reading either format -------------------------------------------------------------


def read_records(path: Path) -> Iterator[Recorded]:
    """The records of a capture file or a HAR file, told apart by their first line."""
    try:
        with path.open("rb") as file:
            first = next((line for line in file if line.strip()), b"")
    except OSError as exc:
        msg = f"{path}: cannot read: {exc.strerror or exc}"
        raise RecordError(msg) from exc
    try:
        opening = json.loads(first)
    except ValueError:
        opening = None  # a HAR file written over several lines
    if isinstance(opening, dict) and "request" in opening:
        yield from _read_lines(path)
    else:
        yield from _read_har(path)


def _read_lines(path: Path) -> Iterator[Recorded]:
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                yield from_line(line)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                msg = f"{path}:{number}: not a capture record: {exc}"
                raise RecordError(msg) from exc


def _read_har(path: Path) -> Iterator[Recorded]:
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:
        msg = f"{path}: not a HAR file: {exc}"
        raise RecordError(msg) from exc
    try:
        yield from from_har(data)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        msg = f"{path}: {exc}"
        raise RecordError(msg) from exc


# --- HAR 1.2 ---------------------------------------------------------------------------


def to_har(records: Iterable[Recorded], *, scheme: str = "http") -> dict[str, Any]:
    """A HAR 1.2 document of `records` (URLs built from each request's Host)."""
    return {
        "log": {
            "version": _HAR_VERSION,
            "creator": _CREATOR,
            "entries": [_har_entry(record, scheme) for record in records],
        }
    }


def _har_entry(record: Recorded, scheme: str) -> dict[str, Any]:
    url = f"{scheme}://{record.host}{record.target}"
    query = urlsplit(url).query
    request: dict[str, Any] = {
        "method": record.method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": [{"name": k, "value": v} for k, v in record.headers],
        "queryString": [
            {"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)
        ],
        "headersSize": -1,
        "bodySize": len(record.body),
    }
    if record.body:
        request["postData"] = {
            "mimeType": _header(record.headers, "content-type"),
            **_har_text(record.body),
        }
    answer = record.answer
    response: dict[str, Any] = {
        "status": answer.status if answer else 0,
        "statusText": "",
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": [{"name": k, "value": v} for k, v in (answer.headers if answer else ())],
        "content": {
            "size": len(answer.body) if answer else 0,
            "mimeType": _header(answer.headers, "content-type") if answer else "",
            **(_har_text(answer.body) if answer else {}),
        },
        "redirectURL": "",
        "headersSize": -1,
        "bodySize": len(answer.body) if answer else -1,
    }
    wait = round((answer.latency if answer else 0.0) * 1000, 3)
    return {
        "startedDateTime": _iso(record.at),
        "time": wait,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": 0},
        "_route": record.route,
    }


def _har_text(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode()}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode(), "encoding": "base64"}


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def from_har(data: Any) -> Iterator[Recorded]:
    """The requests (and answers) of a HAR document, such as a browser saves."""
    log = data.get("log") if isinstance(data, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        msg = "not a HAR file: no log.entries list"
        raise ValueError(msg)  # noqa: TRY004 - one error type for every bad input
    for index, entry in enumerate(entries):
        try:
            yield _from_entry(entry)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            msg = f"HAR entry {index}: {exc!r}"
            raise ValueError(msg) from exc


def _from_entry(entry: dict[str, Any]) -> Recorded:
    request = entry["request"]
    url = urlsplit(request["url"])
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = tuple(
        (h["name"], h["value"])
        for h in request.get("headers", [])
        # HTTP/2 pseudo-headers (`:authority`, ...) that browsers record.
        if not h["name"].startswith(":")
    )
    if not any(k.lower() == "host" for k, _ in headers) and url.netloc:
        headers = (("Host", url.netloc), *headers)
    body = _har_body(request.get("postData") or {})
    response = entry.get("response") or {}
    answer = None
    if response.get("status"):
        answer = Answer(
            status=int(response["status"]),
            headers=tuple((h["name"], h["value"]) for h in response.get("headers", [])),
            body=_har_body(response.get("content") or {}),
            latency=round(float(entry.get("time") or 0.0) / 1000, 6),
        )
    return Recorded(
        at=_parse_time(entry.get("startedDateTime")),
        route=entry.get("_route"),
        method=str(request["method"]).upper(),
        target=target,
        headers=headers,
        body=body,
        answer=answer,
    )


def _har_body(part: dict[str, Any]) -> bytes:
    text = part.get("text") or ""
    if part.get("encoding") == "base64":
        return base64.b64decode(text)
    return str(text).encode()
