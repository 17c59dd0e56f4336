"""The private and internal names of our dependencies that club-proxy relies on.

aiohttp, redis-py, Tortoise ORM and asyncpg are used below their documented
APIs in a few places; docs/dependency-internals.md lists each one, why it is
used and what to do when it changes. Every case below checks one of them
against the installed library: that the name exists, that its signature still
takes what our code passes or overrides, that the library still calls a
method we override from where we expect, and that the names our subclasses
add are still free in the library's class. An upgrade that changes one fails
here first, with a message naming the library name, the club-proxy module
that relies on it and the doc.

Nothing here needs a server, a database or the network: instances are built
on the test's event loop without a socket, and the parsers and the client
protocol are fed bytes.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
from aiohttp import web
from tortoise import fields
from tortoise.models import Model

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

DOC: Final = "docs/dependency-internals.md"

# The club-proxy modules that rely on the names (paths in the repository).
EXCHANGE: Final = "proxy/upstream/exchange.py"
CLIENT: Final = "proxy/upstream/client.py"
FAILURES: Final = "proxy/upstream/failures.py"
LANE: Final = "proxy/fastlane/lane.py"
LANE_CALL: Final = "proxy/fastlane/call.py"
LANE_ANSWER: Final = "proxy/fastlane/answer.py"
HEADERS: Final = "proxy/core/headers.py"
PROTOCOL: Final = "proxy/serving/protocol.py"
SERVING_APP: Final = "proxy/serving/app.py"
RELAY: Final = "proxy/webpath/relay.py"
RESPONSES: Final = "proxy/webpath/responses.py"
DISPATCH: Final = "proxy/webpath/dispatch.py"
INPROCESS: Final = "proxy/webpath/inprocess.py"
CACHE: Final = "legacy_compat/_cache.py"
LEGACY_DB: Final = "legacy_compat/_db.py"
SQL: Final = "new_services/sql.py"
FIELDS: Final = "new_services/fields.py"
NEW_DB: Final = "new_services/db.py"
NEW_SERVICES: Final = "new_services/services.py"
NEW_REGISTRATIONS: Final = "new_services/registrations/models.py"
NEW_SERVICE_HANDLERS: Final = "new_services/service/handlers.py"
NEW_SOCKETS: Final = "new_services/realtime/sockets.py"

# What the fast lane and ExtensionMethodParser build their parsers with
# (aiohttp's RequestHandler defaults, which the proxy mirrors).
LIMITS: Final = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 128}
GET: Final = b"GET /a?b=1 HTTP/1.1\r\nHost: proxy.test\r\nX-Thing: 1\r\n\r\n"
BREW: Final = b"BREW /pot HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
ANSWER: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi"


class Drift(Exception):
    """The installed library differs from what club-proxy relies on."""


@dataclass(frozen=True, slots=True)
class Case:
    """One library name club-proxy relies on, and how to check it."""

    id: str
    name: str  # dotted, as the library spells it
    users: tuple[str, ...]
    check: Callable[[], Awaitable[None]]

    @property
    def library(self) -> str:
        return self.name.partition(".")[0]


# --- how a name is checked --------------------------------------------------------


def resolve(path: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for index, part in enumerate(parts[cut:], start=cut):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                owner = ".".join(parts[:index])
                raise Drift(f"{owner} has no attribute {part!r} any more") from None
        return obj
    raise Drift(f"cannot import {parts[0]!r}")


def shape(fn: Any) -> str:
    """A signature without annotations or default values: `(self, exc, exc_cause=...)`."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise Drift(f"its signature cannot be read any more: {exc}") from None
    out: list[str] = []
    star = False
    params = list(sig.parameters.values())
    for index, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        if param.kind is param.VAR_POSITIONAL:
            out.append(f"*{param.name}")
            star = True
        elif param.kind is param.VAR_KEYWORD:
            out.append(f"**{param.name}")
        else:
            out.append(param.name + ("=..." if param.default is not param.empty else ""))
        following = params[index + 1] if index + 1 < len(params) else None
        if param.kind is param.POSITIONAL_ONLY and (
            following is None or following.kind is not param.POSITIONAL_ONLY
        ):
            out.append("/")
    return f"({', '.join(out)})"


def referenced(fn: Any) -> set[str]:
    """Every attribute, name, keyword argument and string constant in the source of `fn`."""
    if isinstance(fn, property):
        fn = fn.fget
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise Drift(f"its source cannot be read any more: {exc}") from None
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.keyword) and node.arg is not None:
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def exists(case_id: str, path: str, *users: str, kind: type | str | None = None) -> Case:
    """`path` resolves; with `kind` (a type or its dotted path), to an instance or subclass of it."""

    async def check() -> None:
        obj = resolve(path)
        if kind is None:
            return
        expected: type = resolve(kind) if isinstance(kind, str) else kind
        if isinstance(obj, expected) or (isinstance(obj, type) and issubclass(obj, expected)):
            return
        raise Drift(f"is {obj!r} now, not a {expected.__name__}")

    return Case(case_id, path, users, check)


def members(case_id: str, path: str, names: tuple[str, ...], *users: str) -> Case:
    """The module or class at `path` still has each of `names`."""

    async def check() -> None:
        owner = resolve(path)
        gone = [name for name in names if not hasattr(owner, name)]
        if gone:
            raise Drift(f"has no {', '.join(gone)} any more")

    return Case(case_id, f"{path}.{{{', '.join(names)}}}", users, check)


def overrides(case_id: str, path: str, expected: str, *users: str, is_async: bool = False) -> Case:
    """A method club-proxy overrides (or mirrors): its parameters are exactly `expected`.

    `expected` is written as `shape` renders it: names and kinds, `=...` for a default.
    """

    async def check() -> None:
        fn = resolve(path)
        actual = shape(fn)
        if actual != expected:
            raise Drift(f"takes {actual} now; our override takes {expected}")
        if inspect.iscoroutinefunction(fn) != is_async:
            raise Drift(f"is {'no longer' if is_async else 'now'} a coroutine function")

    return Case(case_id, path, users, check)


def accepts(
    case_id: str,
    path: str,
    *users: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...] = (),
    is_async: bool | None = None,
) -> Case:
    """A callable club-proxy calls with `args` positionally and `kwargs` by keyword.

    Fails when one of them is no longer taken (a `**kwargs` that would swallow
    it does not count), or a new parameter is required.
    """

    async def check() -> None:
        fn = resolve(path)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise Drift(f"its signature cannot be read any more: {exc}") from None
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        unnamed = [
            k for k in kwargs if k not in sig.parameters or sig.parameters[k].kind not in named
        ]
        if unnamed:
            raise Drift(f"takes {shape(fn)} now: no parameter {', '.join(unnamed)}")
        try:
            sig.bind(*args, **dict.fromkeys(kwargs))
        except TypeError as exc:
            raise Drift(
                f"takes {shape(fn)} now; our call passes {args} and {kwargs}: {exc}"
            ) from None
        if is_async is not None and inspect.iscoroutinefunction(fn) != is_async:
            raise Drift(f"is {'no longer' if is_async else 'now'} a coroutine function")

    return Case(case_id, path, users, check)


def calls(case_id: str, caller: str, callee: str, *users: str) -> Case:
    """The library's own `caller` still uses `callee` (a method we override, a name we set)."""

    async def check() -> None:
        if callee not in referenced(resolve(caller)):
            raise Drift(f"no longer uses {callee!r}: our code relies on it doing so")

    return Case(case_id, f"{caller} -> {callee}", users, check)


def attributes(
    case_id: str,
    path: str,
    build: Callable[[Any, asyncio.AbstractEventLoop], object],
    names: tuple[str, ...],
    *users: str,
) -> Case:
    """An instance of the class at `path`, made by `build(cls, loop)`, has each of `names`."""

    async def check() -> None:
        instance = build(resolve(path), asyncio.get_running_loop())
        gone = [name for name in names if not hasattr(instance, name)]
        if gone:
            raise Drift(f"instances have no {', '.join(gone)} after __init__ any more")

    return Case(case_id, f"{path}().{{{', '.join(names)}}}", users, check)


def unclaimed(
    case_id: str,
    path: str,
    names: tuple[str, ...],
    *users: str,
    build: Callable[[Any, asyncio.AbstractEventLoop], object] | None = None,
) -> Case:
    """Names our subclass of the class at `path` adds: the class (and, with `build`, an
    instance of it) must not have them, or ours would silently replace the library's."""

    async def check() -> None:
        cls = resolve(path)
        owners = [cls] if build is None else [cls, build(cls, asyncio.get_running_loop())]
        taken = sorted({name for name in names for owner in owners if hasattr(owner, name)})
        if taken:
            raise Drift(f"now has {', '.join(taken)} of its own, which our subclass also defines")

    return Case(case_id, f"{path}.{{{', '.join(names)}}}", users, check)


def behaves(case_id: str, name: str, check: Callable[[], Awaitable[None]], *users: str) -> Case:
    """A check of its own, for what a name must still do (not only be)."""
    return Case(case_id, name, users, check)


# --- instances and behaviour ---------------------------------------------------------
#
# Library internals are looked up when a check runs, never imported at the top:
# a name that is gone fails its own case with the message below, not the
# collection of this module.


def _server(loop: asyncio.AbstractEventLoop, cls: Any = web.Server) -> Any:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    return cls(handler, loop=loop, keepalive_timeout=75.0)


def _build_server(cls: Any, loop: asyncio.AbstractEventLoop) -> Any:
    return _server(loop, cls)


def _build_request_handler(cls: Any, loop: asyncio.AbstractEventLoop) -> Any:
    return cls(_server(loop), loop=loop)


def _build_response_handler(cls: Any, loop: asyncio.AbstractEventLoop) -> Any:
    return cls(loop)


def _build_plain(cls: Any, loop: asyncio.AbstractEventLoop) -> Any:
    return cls()


def _build_stream_writer(cls: Any, loop: asyncio.AbstractEventLoop) -> Any:
    return cls(resolve("aiohttp.base_protocol.BaseProtocol")(loop), loop)


def _parse_one(parser: Any, data: bytes) -> tuple[Any, Any, bool]:
    """(message, payload, upgraded) of the one request in `data`."""
    result = parser.feed_data(data)
    if not isinstance(result, tuple) or len(result) != 3:
        raise Drift(f"feed_data returned {result!r}, not (messages, upgraded, tail)")
    messages, upgraded, _ = result
    if len(messages) != 1:
        raise Drift(f"one request gave {len(messages)} messages")
    message, payload = messages[0]
    return message, payload, upgraded


async def _c_parser_is_llhttp() -> None:
    # The fast lane imports aiohttp.http_parser.HttpRequestParser for llhttp: its
    # speed, and its fixed method list (an unknown method goes to the Python parser).
    parser = resolve("aiohttp.http_parser.HttpRequestParser")
    if parser.__module__ != "aiohttp._http_parser":
        raise Drift(
            f"is {parser.__module__}.HttpRequestParser, not the C parser "
            "(aiohttp._http_parser): AIOHTTP_NO_EXTENSIONS is set or no wheel was installed"
        )


async def _c_parser_reads_a_bodiless_request() -> None:
    loop = asyncio.get_running_loop()
    protocol = resolve("aiohttp.base_protocol.BaseProtocol")(loop)
    # Exactly the fast lane's construction (FastLane.connection_made).
    parser = resolve("aiohttp.http_parser.HttpRequestParser")(
        protocol, loop, 1 << 16, auto_decompress=False, **LIMITS
    )
    message, payload, upgraded = _parse_one(parser, GET)
    if payload is not resolve("aiohttp.streams.EMPTY_PAYLOAD"):
        raise Drift(f"a bodiless request's payload is {payload!r}, not streams.EMPTY_PAYLOAD")
    if upgraded:
        raise Drift("a plain GET is reported as upgraded")
    if message.version != resolve("aiohttp.http.HttpVersion11"):
        raise Drift(f"an HTTP/1.1 request has version {message.version!r}, not HttpVersion11")
    seen = (message.method, message.path, message.should_close, message.headers.get("X-Thing"))
    if seen != ("GET", "/a?b=1", False, "1"):
        raise Drift(f"(method, path, should_close, header) read as {seen}")
    if (b"X-Thing", b"1") not in message.raw_headers:
        raise Drift(f"raw_headers are {message.raw_headers!r}")


async def _c_parser_declines_a_non_websocket_upgrade() -> None:
    # DeclinedUpgradeGuard: llhttp returns an h2c request as the last message,
    # not upgraded, flagged `upgrade`, and `_replace(should_close=True)` works.
    loop = asyncio.get_running_loop()
    protocol = resolve("aiohttp.base_protocol.BaseProtocol")(loop)
    parser = resolve("aiohttp.http_parser.HttpRequestParser")(protocol, loop, 1 << 16, **LIMITS)
    h2c = b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    messages, upgraded, _ = parser.feed_data(h2c + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    if upgraded or not messages:
        raise Drift(f"an h2c request reads as upgraded={upgraded}, {len(messages)} messages")
    message = messages[-1][0]
    if message.path != "/h2c" or not message.upgrade:
        raise Drift(f"the last message is {message.path!r} with upgrade={message.upgrade}")
    if not message._replace(should_close=True).should_close:
        raise Drift("RawRequestMessage._replace(should_close=True) does not set should_close")


async def _c_parser_refuses_unknown_methods() -> None:
    loop = asyncio.get_running_loop()
    protocol = resolve("aiohttp.base_protocol.BaseProtocol")(loop)
    refusals = (
        resolve("aiohttp.http_exceptions.BadHttpMethod"),
        resolve("aiohttp.http_exceptions.BadStatusLine"),
    )
    # The probe of FastLane._unknown_method: no auto_decompress argument.
    parser = resolve("aiohttp.http_parser.HttpRequestParser")(protocol, loop, 1 << 16, **LIMITS)
    try:
        parser.feed_data(BREW)
    except refusals:
        return
    except Exception as exc:
        raise Drift(f"an unknown method raises {exc!r}, not BadHttpMethod/BadStatusLine") from exc
    raise Drift("llhttp takes an unknown method now: the extension hand-over never happens")


async def _py_parser_reads_extension_methods() -> None:
    loop = asyncio.get_running_loop()
    base = resolve("aiohttp.http_parser.HttpRequestParserPy")
    lines: list[bytes] = []

    def parse_message(self: Any, received: list[bytes]) -> Any:
        lines.append(received[0])
        return base.parse_message(self, received)

    # ExtensionMethodParser's shape and its construction in ProxyRequestHandler.__init__.
    probe = type("ExtensionProbe", (base,), {"parse_message": parse_message})
    parser = probe(
        resolve("aiohttp.base_protocol.BaseProtocol")(loop),
        loop,
        1 << 16,
        **LIMITS,
        payload_exception=resolve("aiohttp.web_protocol.RequestPayloadError"),
        auto_decompress=False,
        max_msg_queue_size=resolve("aiohttp.web_protocol.MAX_MSG_QUEUE_SIZE"),
    )
    message, _, _ = _parse_one(parser, BREW)
    if lines != [b"BREW /pot HTTP/1.1"]:
        raise Drift(f"parse_message got {lines!r} as the request line, not b'BREW /pot HTTP/1.1'")
    if message.method != "BREW":
        raise Drift(f"method read as {message.method!r}")


async def _request_handler_parser_arguments() -> None:
    # ProxyRequestHandler builds ExtensionMethodParser with "the same arguments as
    # aiohttp's own parser in RequestHandler.__init__": a new one must be added there.
    init = resolve("aiohttp.web_protocol.RequestHandler.__init__")
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    built = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "HttpRequestParser"
    ]
    if len(built) != 1:
        raise Drift(f"__init__ builds {len(built)} HttpRequestParser, not one")
    call = built[0]
    ours = {*LIMITS, "payload_exception", "auto_decompress", "max_msg_queue_size"}
    theirs = {keyword.arg or "**" for keyword in call.keywords}
    if len(call.args) != 3 or theirs != ours:
        raise Drift(
            f"builds its parser with {len(call.args)} positional arguments and "
            f"{sorted(theirs)}; ExtensionMethodParser gets 3 and {sorted(ours)}"
        )


async def _request_handler_defaults() -> None:
    # protocol.py falls back to these when the app sets no handler_args.
    init = resolve("aiohttp.web_protocol.RequestHandler.__init__")
    params = inspect.signature(init).parameters
    mirrored = {**LIMITS, "keepalive_timeout": 3630, "auto_decompress": True}
    actual = {name: params[name].default for name in mirrored if name in params}
    if actual != mirrored:
        raise Drift(f"defaults are {actual} now; protocol.py mirrors {mirrored}")


async def _request_handler_takes_slots() -> None:
    loop = asyncio.get_running_loop()

    class Slotted(web.RequestHandler):  # ProxyRequestHandler's shape
        __slots__ = ("pending_decision",)

    handler: Any = Slotted(_server(loop), loop=loop)
    handler.pending_decision = None
    handler._parser = None  # what extension_methods does, with a real parser
    if not isinstance(handler._read_bufsize, int):
        raise Drift(f"_read_bufsize is {handler._read_bufsize!r}, not the parser's limit")


async def _server_keeps_handler_args() -> None:
    loop = asyncio.get_running_loop()
    server: Any = _server(loop)
    if server._kwargs != {"keepalive_timeout": 75.0} or server._loop is not loop:
        raise Drift(f"_kwargs is {server._kwargs!r}, _loop {server._loop!r}")


async def _app_runner_hands_over_handler_args() -> None:
    # ProxyAppRunner._make_server reads the parser limits, keep-alive and
    # handler_cancellation of the Server aiohttp built from the app's handler_args.
    app = web.Application(
        handler_args={
            "handler_cancellation": True,
            "max_line_size": 9000,
            "keepalive_timeout": 75.0,
        }
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        server: Any = runner.server
        if not isinstance(server, web.Server):
            raise Drift(f"setup() made {server!r}, not a web.Server")
        kwargs = server._kwargs
        seen = (
            server.handler_cancellation,
            kwargs.get("max_line_size"),
            kwargs.get("keepalive_timeout"),
        )
        if seen != (True, 9000, 75.0) or "handler_cancellation" in kwargs:
            raise Drift(f"handler_args reach the Server as {seen}, _kwargs {kwargs!r}")
        if server.request_handler != resolve("aiohttp.web_app.Application._handle").__get__(app):
            raise Drift("the Server no longer calls Application._handle per request")
    finally:
        await runner.cleanup()


async def _exc_sentinel_is_the_default() -> None:
    sentinel = resolve("aiohttp.helpers._EXC_SENTINEL")
    set_exception = resolve("aiohttp.client_proto.ResponseHandler.set_exception")
    default = inspect.signature(set_exception).parameters["exc_cause"].default
    if default is not sentinel or not isinstance(sentinel, BaseException):
        raise Drift(f"set_exception's exc_cause defaults to {default!r}, not helpers._EXC_SENTINEL")


async def _response_handler_reads_an_answer() -> None:
    # ResponseProtocol in listener mode: answer heads caught in feed_data; then the
    # plain-answer fallback (expect_plain): parser dropped, made again, same bytes.
    heads: list[tuple[Any, Any]] = []

    def feed_data(self: Any, data: tuple[Any, Any], size: int = 0) -> None:
        heads.append(data)

    base = resolve("aiohttp.client_proto.ResponseHandler")
    proto = type("ListenerProbe", (base,), {"feed_data": feed_data})(asyncio.get_running_loop())
    for _ in range(2):
        proto._parser = None
        proto._payload = None
        # _expect_answer's arguments.
        proto.set_response_params(
            skip_payload=False,
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=None,
            read_bufsize=1 << 16,
            **LIMITS,
        )
        if proto._parser is None:
            raise Drift("set_response_params no longer makes the parser (_parser)")
        proto.data_received(ANSWER)
    if len(heads) != 2:
        raise Drift(f"two answers reached feed_data {len(heads)} times")
    message, payload = heads[-1]
    seen = (message.code, message.reason, message.headers.get("X-Up"), payload.is_eof())
    if seen != (200, "OK", "1", True) or (b"X-Up", b"1") not in message.raw_headers:
        raise Drift(f"(code, reason, header, eof) read as {seen}, raw {message.raw_headers!r}")
    if payload.read_nowait(-1) != b"hi" or proto._payload is not payload:
        raise Drift("the answer's body is not in its StreamReader (_payload)")


async def _writer_calls_on_body_write_with_two_numbers() -> None:
    # _BodyCounter.__call__(size, output_size) in webpath/dispatch.py.
    found = 0
    for name in ("write", "write_eof"):
        method = resolve(f"aiohttp.http_writer.StreamWriter.{name}")
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "notify") or (
                isinstance(func, ast.Attribute) and func.attr == "on_body_write"
            ):
                found += 1
                if len(node.args) != 2 or node.keywords:
                    raise Drift(
                        f"calls it as {ast.unparse(node)}; our callback takes (size, output_size)"
                    )
    if not found:
        raise Drift("StreamWriter.write/write_eof no longer call on_body_write")


async def _prepare_headers_before_write() -> None:
    # PassThroughResponse/ErrorResponse strip Server and Content-Type after
    # super()._prepare_headers(): that must run before the head is written.
    start = resolve("aiohttp.web_response.StreamResponse._start")
    tree = ast.parse(textwrap.dedent(inspect.getsource(start)))
    lines = {
        node.attr: node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in {"_prepare_headers", "_write_headers"}
    }
    if len(lines) != 2 or lines["_prepare_headers"] > lines["_write_headers"]:
        raise Drift(f"_start no longer calls _prepare_headers before _write_headers: {lines}")


async def _tortoise_meta() -> None:
    class Probe(Model):
        id = fields.IntField(primary_key=True)
        name = fields.CharField(max_length=10, source_field="probe_name")

        class Meta:
            table = "probe_table"

    meta: Any = Probe._meta
    if meta.fields_db_projection != {"id": "id", "name": "probe_name"}:
        raise Drift(f"fields_db_projection is {meta.fields_db_projection!r}")
    if meta.db_table != "probe_table":
        raise Drift(f"db_table is {meta.db_table!r}")
    if meta.fields_map["name"].model_field_name != "name":
        raise Drift("a field no longer knows its model_field_name")


async def _tortoise_dialect_class() -> None:
    class Naive(fields.DatetimeField):  # type: ignore[type-arg]  # NaiveUTCDatetimeField's shape
        class _db_postgres:  # noqa: N801 - Tortoise's per-dialect naming
            SQL_TYPE = "TIMESTAMP"

    dialect = resolve("tortoise.backends.asyncpg.client.AsyncpgDBClient.capabilities").dialect
    ours = Naive().get_for_dialect(dialect, "SQL_TYPE")
    theirs: Any = fields.DatetimeField()
    theirs = theirs.get_for_dialect(dialect, "SQL_TYPE")
    if (dialect, ours, theirs) != ("postgres", "TIMESTAMP", "TIMESTAMPTZ"):
        raise Drift(
            f"dialect {dialect!r}: our _db_postgres gives {ours!r}, DatetimeField's {theirs!r}"
        )


async def _tortoise_char_field_sql_type() -> None:
    if not isinstance(inspect.getattr_static(fields.CharField, "SQL_TYPE"), property):
        raise Drift(
            "CharField.SQL_TYPE is no longer a property (TextKeyField overrides it with one)"
        )


async def _tortoise_passes_credentials_through() -> None:
    async def keep(connection: object) -> None:
        return None

    client_class = resolve("tortoise.backends.asyncpg.client.AsyncpgDBClient")
    # tortoise_config's credentials, as Tortoise hands them to the client.
    client = client_class(
        connection_name="probe",
        user="u",
        password="p",
        database="d",
        host="127.0.0.1",
        port=5432,
        minsize=1,
        maxsize=2,
        statement_cache_size=0,
        server_settings={"application_name": "probe"},
        reset=keep,
    )
    extra = client.extra
    if extra.get("statement_cache_size") != 0 or extra.get("reset") is not keep:
        raise Drift(f"unknown credentials no longer kept for asyncpg: extra={extra!r}")
    if client.server_settings != {"application_name": "probe"}:
        raise Drift(f"server_settings became {client.server_settings!r}")
    if "extra" not in referenced(client_class.create_connection):
        raise Drift("create_connection no longer passes extra to asyncpg.create_pool")


# --- the table ---------------------------------------------------------------------------

RH: Final = "aiohttp.client_proto.ResponseHandler"
BP: Final = "aiohttp.base_protocol.BaseProtocol"
PY_PARSER: Final = "aiohttp.http_parser.HttpRequestParserPy"
HANDLER: Final = "aiohttp.web_protocol.RequestHandler"
SERVER: Final = "aiohttp.web_server.Server"
RUNNER: Final = "aiohttp.web_runner"
RESPONSE: Final = "aiohttp.web_response.StreamResponse"
REDIS: Final = "redis.asyncio.client.Redis"
TORTOISE_CLIENT: Final = "tortoise.backends.base.client.BaseDBAsyncClient"
CONTEXT: Final = "tortoise.context.TortoiseContext"

CASES: Final = (
    # === aiohttp: the thin upstream client reads answers with ResponseHandler ===
    # ResponseProtocol subclasses it; ConnectionPool builds one per connection with the loop.
    accepts("rh-init", f"{RH}.__init__", EXCHANGE, CLIENT, args=("self", "loop")),
    # The state ResponseProtocol reads and writes: parser reset, sink pause, deadline.
    attributes(
        "rh-state",
        RH,
        _build_response_handler,
        (
            "_loop",
            "_parser",
            "_payload",
            "_reading_paused",
            "_buffer_paused",
            "_read_timeout",
            "_read_timeout_handle",
            "transport",
        ),
        EXCHANGE,
    ),
    # _expect_answer sets each answer up as ClientSession does.
    accepts(
        "rh-set-response-params",
        f"{RH}.set_response_params",
        EXCHANGE,
        args=("self",),
        kwargs=(
            "skip_payload",
            "read_until_eof",
            "auto_decompress",
            "read_timeout",
            "read_bufsize",
            *LIMITS,
        ),
    ),
    # Two answers without a socket: heads reach feed_data, a dropped parser is made again.
    behaves("rh-answer", f"{RH}.set_response_params", _response_handler_reads_an_answer, EXCHANGE),
    # Overridden: notes the answer; a plain answer or a body sink bypasses the parser.
    overrides("rh-data-received", f"{RH}.data_received", "(self, data)", EXCHANGE),
    # Overridden: with a listener, heads go to `heads` instead of the queue.
    overrides("rh-feed-data", f"{RH}.feed_data", "(self, data, size=...)", EXCHANGE),
    # Overridden: also tells the listener and the body sink.
    overrides("rh-set-exception", f"{RH}.set_exception", "(self, exc, exc_cause=...)", EXCHANGE),
    # The default of that override is aiohttp's private sentinel, imported.
    behaves(
        "exc-sentinel", "aiohttp.helpers._EXC_SENTINEL", _exc_sentinel_is_the_default, EXCHANGE
    ),
    # Overridden: no empty parser feed when nothing is paused. StreamReader
    # passes resume_parser by keyword, so the name matters too.
    overrides("rh-resume-reading", f"{RH}.resume_reading", "(self, resume_parser=...)", EXCHANGE),
    # Overridden: also cancels the deadline timer.
    overrides("rh-connection-lost", f"{RH}.connection_lost", "(self, exc)", EXCHANGE),
    # Overridden: a read moves a deadline instead of re-arming a timer.
    overrides("rh-reschedule-timeout", f"{RH}._reschedule_timeout", "(self)", EXCHANGE),
    # Overridden (start_timeout = _reschedule_timeout).
    overrides("rh-start-timeout", f"{RH}.start_timeout", "(self)", EXCHANGE),
    # Overridden: drops the deadline; the one timer finds it gone.
    overrides("rh-drop-timeout", f"{RH}._drop_timeout", "(self)", EXCHANGE),
    # Called by pause_sink, to stop reading while the client's socket is full.
    accepts("bp-pause-transport", f"{BP}._pause_transport_reading", EXCHANGE, args=("self",)),
    # Called by resume_sink, to read on.
    accepts("bp-resume-transport", f"{BP}._resume_transport_reading", EXCHANGE, args=("self",)),
    # Called by _check_deadline when the deadline has passed.
    accepts("rh-on-read-timeout", f"{RH}._on_read_timeout", EXCHANGE, args=("self",)),
    # Awaited by _send_body when the upstream socket is full.
    accepts("bp-drain-helper", f"{BP}._drain_helper", EXCHANGE, args=("self",), is_async=True),
    # The rest of the (undocumented) protocol API the exchange, the pool and the lane use.
    members(
        "rh-api",
        RH,
        (
            "read",
            "__len__",
            "should_close",
            "is_connected",
            "abort",
            "force_close",
            "exception",
            "writing_paused",
        ),
        EXCHANGE,
        CLIENT,
        LANE_CALL,
    ),
    # Reads move the deadline through _reschedule_timeout ...
    calls("rh-read-reschedules", f"{RH}.data_received", "_reschedule_timeout", EXCHANGE),
    # ... answer heads go through feed_data (the listener's `heads`) ...
    calls("rh-read-feeds", f"{RH}.data_received", "feed_data", EXCHANGE),
    # ... and the end of an answer drops the deadline through _drop_timeout.
    calls("rh-answer-end-drops", f"{RH}.data_received", "_drop_timeout", EXCHANGE),
    # aiohttp's start_timeout only reschedules: aliasing it skips nothing else.
    calls("rh-start-reschedules", f"{RH}.start_timeout", "_reschedule_timeout", EXCHANGE),
    # The read timer fires _on_read_timeout, which _check_deadline calls in its place.
    calls("rh-timer-fires", f"{RH}._reschedule_timeout", "_on_read_timeout", EXCHANGE),
    # _read_timeout_handle is the one timer (our connection_lost cancels it).
    calls("rh-timer-handle", f"{RH}._drop_timeout", "_read_timeout_handle", EXCHANGE),
    # A lost connection fails the answer through set_exception (the listener hears it).
    calls("rh-lost-fails-answer", f"{RH}.connection_lost", "set_exception", EXCHANGE),
    # What ResponseProtocol adds must stay free in aiohttp's class.
    unclaimed(
        "rh-unclaimed",
        RH,
        (
            "answered",
            "listener",
            "heads",
            "_deadline",
            "sink",
            "sink_failed",
            "plain",
            "_plain_limits",
            "expect_plain",
            "pause_sink",
            "resume_sink",
            "stop_timeout",
            "_notify",
            "_check_deadline",
        ),
        EXCHANGE,
        build=_build_response_handler,
    ),
    # Imported from a non-top-level module (also exported by aiohttp itself).
    members(
        "client-exceptions",
        "aiohttp.client_exceptions",
        ("ClientOSError", "ServerDisconnectedError"),
        EXCHANGE,
        CLIENT,
        LANE_CALL,
    ),
    # === aiohttp: the fast lane parses request heads with llhttp ===
    # aiohttp.http_parser.HttpRequestParser is the C (llhttp) parser.
    behaves("llhttp-parser", "aiohttp.http_parser.HttpRequestParser", _c_parser_is_llhttp, LANE),
    # FastLane's construction; EMPTY_PAYLOAD identity, HttpVersion11, message fields.
    behaves(
        "llhttp-bodiless-request",
        "aiohttp.http_parser.HttpRequestParser.feed_data",
        _c_parser_reads_a_bodiless_request,
        LANE,
        LANE_CALL,
    ),
    # DeclinedUpgradeGuard relies on how llhttp returns a declined upgrade.
    behaves(
        "llhttp-declined-upgrade",
        "aiohttp.http_parser.HttpRequestParser.feed_data",
        _c_parser_declines_a_non_websocket_upgrade,
        PROTOCOL,
    ),
    # DeclinedUpgradeGuard forwards the per-request call aiohttp's handler makes.
    exists(
        "llhttp-message-consumed",
        "aiohttp.http_parser.HttpRequestParser.message_consumed",
        PROTOCOL,
    ),
    # FastLane._unknown_method tells an extension method by these two exceptions.
    behaves(
        "llhttp-unknown-method",
        "aiohttp.http_exceptions.BadHttpMethod",
        _c_parser_refuses_unknown_methods,
        LANE,
    ),
    # Imported from a non-top-level module: the version and the message types.
    members(
        "http-names",
        "aiohttp.http",
        ("HttpVersion11", "RawRequestMessage", "RawResponseMessage"),
        LANE,
        LANE_CALL,
        EXCHANGE,
        PROTOCOL,
        HEADERS,
    ),
    # Imported from a non-top-level module: the parser's errors.
    members(
        "http-exceptions",
        "aiohttp.http_exceptions",
        ("BadHttpMethod", "BadStatusLine", "HttpProcessingError"),
        LANE,
        PROTOCOL,
        FAILURES,
    ),
    # EMPTY_PAYLOAD for the lane's identity test; StreamReader for annotations.
    members(
        "streams",
        "aiohttp.streams",
        ("EMPTY_PAYLOAD", "StreamReader"),
        LANE,
        LANE_CALL,
        LANE_ANSWER,
        EXCHANGE,
        CLIENT,
        RELAY,
    ),
    # The handler type of middlewares, in annotations only.
    members(
        "typedefs",
        "aiohttp.typedefs",
        ("Handler",),
        SERVING_APP,
        "proxy/serving/admin.py",
        "new_services/http.py",
        "new_services/registry.py",
        "examples/club_api/app/core/errors.py",
    ),
    # FastLane is the parser's protocol: it mirrors BaseProtocol's pause_reading ...
    overrides("lane-pause-reading", f"{BP}.pause_reading", "(self)", LANE),
    # ... and resume_reading (which a body's StreamReader calls with resume_parser=).
    overrides("lane-resume-reading", f"{BP}.resume_reading", "(self, resume_parser=...)", LANE),
    # === aiohttp: serving (ProxyAppRunner -> ProxyServer -> ProxyRequestHandler) ===
    # ExtensionMethodParser subclasses the pure-Python parser ...
    exists("py-parser", PY_PARSER, PROTOCOL, kind="aiohttp.http_parser.HttpParser"),
    # ... overrides parse_message ...
    overrides("py-parse-message", f"{PY_PARSER}.parse_message", "(self, lines)", PROTOCOL),
    # ... which HttpParser.feed_data calls with the head's lines ...
    calls("py-feed-data-parses", f"{PY_PARSER}.feed_data", "parse_message", PROTOCOL),
    # ... is built by ProxyRequestHandler with these arguments ...
    accepts(
        "py-parser-init",
        f"{PY_PARSER}.__init__",
        PROTOCOL,
        args=("self", "protocol", "loop", "limit"),
        kwargs=(*LIMITS, "payload_exception", "auto_decompress", "max_msg_queue_size"),
    ),
    # ... reads a method llhttp refuses, with the request line first in `lines` ...
    behaves(
        "py-parser-extension-method",
        f"{PY_PARSER}.parse_message",
        _py_parser_reads_extension_methods,
        PROTOCOL,
    ),
    # ... and gets the same arguments as RequestHandler's own parser.
    behaves(
        "handler-parser-args", f"{HANDLER}.__init__", _request_handler_parser_arguments, PROTOCOL
    ),
    # One of those arguments, imported from aiohttp.web_protocol ...
    exists("max-msg-queue-size", "aiohttp.web_protocol.MAX_MSG_QUEUE_SIZE", PROTOCOL, kind=int),
    # ... and another.
    exists(
        "request-payload-error",
        "aiohttp.web_protocol.RequestPayloadError",
        PROTOCOL,
        kind=Exception,
    ),
    # protocol.py's fallbacks for an app without handler_args mirror these defaults.
    behaves("handler-defaults", f"{HANDLER}.__init__", _request_handler_defaults, PROTOCOL),
    # ProxyRequestHandler(manager, loop=..., **Server._kwargs): the app's handler_args.
    accepts(
        "handler-init",
        f"{HANDLER}.__init__",
        PROTOCOL,
        SERVING_APP,
        args=("self", "manager"),
        kwargs=("loop", "keepalive_timeout", "auto_decompress", "access_log", *LIMITS),
    ),
    # Read and replaced by ProxyRequestHandler (_parser, _read_bufsize), read by handle_error.
    attributes(
        "handler-state",
        HANDLER,
        _build_request_handler,
        ("_parser", "_read_bufsize", "_manager"),
        PROTOCOL,
    ),
    # ProxyRequestHandler adds a slot (pending_decision) and replaces _parser.
    behaves("handler-slots", f"{HANDLER}.__slots__", _request_handler_takes_slots, PROTOCOL),
    # Overridden: the proxy's JSON 400 and one warning, for parser and handler errors.
    overrides(
        "handle-error",
        f"{HANDLER}.handle_error",
        "(self, request, status=..., exc=..., message=...)",
        PROTOCOL,
    ),
    # Overridden: the send deadline is armed while the client's socket is full.
    overrides("handler-pause-writing", f"{HANDLER}.pause_writing", "(self)", PROTOCOL),
    overrides("handler-resume-writing", f"{HANDLER}.resume_writing", "(self)", PROTOCOL),
    overrides("handler-connection-lost", f"{HANDLER}.connection_lost", "(self, exc)", PROTOCOL),
    # The slots ProxyRequestHandler adds must stay free in aiohttp's class.
    unclaimed(
        "handler-unclaimed",
        HANDLER,
        ("pending_decision", "send_deadline", "remote_address"),
        PROTOCOL,
        build=_build_request_handler,
    ),
    # aiohttp answers a request its parser rejected through handle_error ...
    calls("parser-errors-handled", f"{HANDLER}._make_error_handler", "handle_error", PROTOCOL),
    # ... and a handler that raised or timed out too.
    calls("handler-errors-handled", f"{HANDLER}._handle_request", "handle_error", PROTOCOL),
    # ProxyAppRunner copies these four and passes everything else on as _kwargs.
    overrides(
        "server-init",
        f"{SERVER}.__init__",
        "(self, handler, *, request_factory=..., handler_cancellation=..., loop=..., **kwargs)",
        PROTOCOL,
    ),
    # What ProxyAppRunner and ProxyServer read of a Server.
    attributes(
        "server-state",
        SERVER,
        _build_server,
        ("_loop", "_kwargs", "request_handler", "request_factory", "handler_cancellation"),
        PROTOCOL,
    ),
    # _kwargs holds exactly the handler args (ProxyServer makes its handlers with them).
    behaves("server-kwargs", f"{SERVER}._kwargs", _server_keeps_handler_args, PROTOCOL),
    # Overridden by ProxyServer: the protocol factory (a FastLane or a handler) ...
    overrides("server-call", f"{SERVER}.__call__", "(self)", PROTOCOL),
    # ... closing the lanes with the handlers ...
    overrides("server-pre-shutdown", f"{SERVER}.pre_shutdown", "(self)", PROTOCOL),
    # ... and draining them.
    overrides(
        "server-shutdown", f"{SERVER}.shutdown", "(self, timeout=...)", PROTOCOL, is_async=True
    ),
    # What ProxyServer adds must stay free in aiohttp's class.
    unclaimed(
        "server-unclaimed",
        SERVER,
        ("lanes", "proxy", "handler", "extension_handler"),
        PROTOCOL,
        build=_build_server,
    ),
    # The site serves the runner's Server itself as the protocol factory (__call__).
    calls("site-serves-server", f"{RUNNER}.TCPSite.start", "server", PROTOCOL),
    # The runner's cleanup calls the two shutdown steps ProxyServer overrides: pre_shutdown ...
    calls("runner-pre-shutdown", f"{RUNNER}.BaseRunner.cleanup", "pre_shutdown", PROTOCOL),
    # ... then shutdown.
    calls("runner-shutdown", f"{RUNNER}.BaseRunner.cleanup", "shutdown", PROTOCOL),
    # Overridden by ProxyAppRunner, which replaces the Server it returns ...
    overrides("make-server", f"{RUNNER}.AppRunner._make_server", "(self)", PROTOCOL, is_async=True),
    # ... called by setup() ...
    calls("setup-makes-server", f"{RUNNER}.BaseRunner.setup", "_make_server", PROTOCOL),
    # ... with the app's handler_args in the Server it returns.
    behaves(
        "make-server-handler-args",
        f"{RUNNER}.AppRunner._make_server",
        _app_runner_hands_over_handler_args,
        PROTOCOL,
        SERVING_APP,
    ),
    # === aiohttp: the web path's responses ===
    # PassThroughResponse holds its head back until the first body bytes ...
    exists(
        "send-headers-immediately", f"{RESPONSE}._send_headers_immediately", RESPONSES, kind=bool
    ),
    # ... which _write_headers honours.
    calls(
        "write-headers-reads-it",
        f"{RESPONSE}._write_headers",
        "_send_headers_immediately",
        RESPONSES,
    ),
    # Overridden by PassThroughResponse and ErrorResponse to drop Server / Content-Type ...
    overrides(
        "prepare-headers", f"{RESPONSE}._prepare_headers", "(self)", RESPONSES, is_async=True
    ),
    # ... which it is that sets (Server) ...
    calls("prepare-headers-server", f"{RESPONSE}._prepare_headers", "SERVER", RESPONSES),
    # ... (Content-Type: application/octet-stream) ...
    calls(
        "prepare-headers-content-type", f"{RESPONSE}._prepare_headers", "CONTENT_TYPE", RESPONSES
    ),
    # ... before the head is written.
    behaves(
        "prepare-headers-first", f"{RESPONSE}._start", _prepare_headers_before_write, RESPONSES
    ),
    # What PassThroughResponse adds must stay free in aiohttp's class ...
    unclaimed(
        "pass-through-unclaimed",
        RESPONSE,
        ("upstream_server", "upstream_content_type", "body_bytes", "aborted"),
        RESPONSES,
        build=_build_plain,
    ),
    # ... and what ErrorResponse adds.
    unclaimed(
        "error-response-unclaimed",
        "aiohttp.web_response.Response",
        ("kind", "body_size", "abandon_connection"),
        RESPONSES,
        build=_build_plain,
    ),
    # OwnResponse writes an HTTP/1.1 status line to an HTTP/0.9 or 2.0 request
    # line itself: it overrides _write_headers and reads _req and _payload_writer.
    overrides(
        "own-write-headers", f"{RESPONSE}._write_headers", "(self)", RESPONSES, is_async=True
    ),
    attributes(
        "response-request-writer", RESPONSE, _build_plain, ("_req", "_payload_writer"), RESPONSES
    ),
    # The web path counts the body bytes aiohttp writes with the writer's callback ...
    exists("on-body-write", "aiohttp.abc.AbstractStreamWriter.on_body_write", RESPONSES),
    # ... set on each writer (output_size: has an answer started?) ...
    attributes(
        "writer-state",
        "aiohttp.http_writer.StreamWriter",
        _build_stream_writer,
        ("on_body_write", "output_size"),
        RESPONSES,
        PROTOCOL,
        INPROCESS,
    ),
    # ... and called with (size, output_size).
    behaves(
        "on-body-write-called",
        "aiohttp.http_writer.StreamWriter.write",
        _writer_calls_on_body_write_with_two_numbers,
        RESPONSES,
    ),
    # request.writer (output_size), request.protocol (force_close, the handed decision).
    members(
        "request-writer-protocol",
        "aiohttp.web_request.BaseRequest",
        ("writer", "protocol"),
        RESPONSES,
        DISPATCH,
        RELAY,
        INPROCESS,
        PROTOCOL,
    ),
    # The relay cuts the client connection when the upstream dies mid-body.
    accepts("handler-force-close", f"{HANDLER}.force_close", RELAY, args=("self",)),
    # In-process dispatch calls what aiohttp's server calls per request ...
    overrides(
        "application-handle",
        "aiohttp.web_app.Application._handle",
        "(self, request)",
        INPROCESS,
        is_async=True,
    ),
    # ... (the app's Server is made with Application._handle as its handler) ...
    calls("server-calls-handle", "aiohttp.web_app.Application._make_handler", "_handle", INPROCESS),
    # ... on a clone of the proxy's request with the forwarded headers.
    accepts(
        "request-clone",
        "aiohttp.web_request.Request.clone",
        INPROCESS,
        args=("self",),
        kwargs=("headers",),
    ),
    # LegacyFrameSocket re-encodes the hub's text frames in send_frame (public, overridden) ...
    overrides(
        "ws-send-frame",
        "aiohttp.web_ws.WebSocketResponse.send_frame",
        "(self, message, opcode, compress=...)",
        NEW_SOCKETS,
        is_async=True,
    ),
    # ... and adds one attribute, which must stay free in aiohttp's class.
    unclaimed(
        "ws-unclaimed",
        "aiohttp.web_ws.WebSocketResponse",
        ("_keep_ids",),
        NEW_SOCKETS,
        build=_build_plain,
    ),
    # === redis-py: raw bytes whatever the client's decode_responses ===
    # Cache.get passes NEVER_DECODE as an execute_command option ...
    exists("never-decode", "redis.client.NEVER_DECODE", CACHE, kind=str),
    # ... which takes any options ...
    overrides(
        "execute-command",
        f"{REDIS}.execute_command",
        "(self, *args, **options)",
        CACHE,
        is_async=True,
    ),
    # ... parse_response acts on it ...
    calls("never-decode-honoured", f"{REDIS}.parse_response", "NEVER_DECODE", CACHE),
    # ... by reading without decoding ...
    calls("never-decode-raw", f"{REDIS}.parse_response", "disable_decoding", CACHE),
    # ... and drops the keys= option Cache.get passes beside it.
    calls("keys-option-dropped", f"{REDIS}.parse_response", "keys", CACHE),
    # === Tortoise ORM ===
    # columns() and active_page_sql() build fixed SQL from the field map and table.
    behaves("model-meta", "tortoise.models.MetaInfo", _tortoise_meta, SQL),
    # The legacy datetime fields replace DatetimeField's _db_postgres ...
    exists("datetime-db-postgres", "tortoise.fields.DatetimeField._db_postgres", FIELDS),
    # ... which get_for_dialect reads ...
    overrides(
        "get-for-dialect", "tortoise.fields.Field.get_for_dialect", "(self, dialect, key)", FIELDS
    ),
    # ... under the asyncpg client's dialect name, "postgres".
    behaves(
        "dialect-class", "tortoise.fields.Field.get_for_dialect", _tortoise_dialect_class, FIELDS
    ),
    # TextKeyField overrides CharField's SQL_TYPE property ...
    behaves(
        "char-sql-type", "tortoise.fields.CharField.SQL_TYPE", _tortoise_char_field_sql_type, FIELDS
    ),
    # ... and passes max_length to CharField.
    accepts(
        "char-field-init",
        "tortoise.fields.CharField.__init__",
        FIELDS,
        args=("self",),
        kwargs=("max_length",),
    ),
    # Overridden by the datetime fields: aware UTC to the database ...
    overrides(
        "to-db-value",
        "tortoise.fields.DatetimeField.to_db_value",
        "(self, value, instance)",
        FIELDS,
    ),
    # ... and from it.
    overrides(
        "to-python-value", "tortoise.fields.DatetimeField.to_python_value", "(self, value)", FIELDS
    ),
    # fetch()/fetchrow() run fixed SQL on Tortoise's client ...
    overrides(
        "execute-query",
        f"{TORTOISE_CLIENT}.execute_query",
        "(self, query, values=...)",
        SQL,
        is_async=True,
    ),
    # ... and take asyncpg's Records as they come (annotated as dicts).
    calls(
        "execute-query-records",
        "tortoise.backends.asyncpg.client.AsyncpgDBClient.execute_query",
        "fetch",
        SQL,
    ),
    # The stats endpoint runs fixed SQL as dicts.
    overrides(
        "execute-query-dict",
        f"{TORTOISE_CLIENT}.execute_query_dict",
        "(self, query, values=...)",
        NEW_SERVICE_HANDLERS,
        is_async=True,
    ),
    # The client type, imported from a non-top-level module for annotations.
    exists("base-client", TORTOISE_CLIENT, SQL, kind=type),
    # tortoise_config passes asyncpg pool options (statement_cache_size, reset) as credentials.
    behaves(
        "credentials-pass-through",
        "tortoise.backends.base_postgres.client.BasePostgresClient.extra",
        _tortoise_passes_credentials_through,
        NEW_DB,
    ),
    # One TortoiseContext per process, set as the global fallback before init ...
    members(
        "tortoise-context",
        "tortoise.context",
        ("TortoiseContext", "get_current_context", "set_global_context"),
        NEW_SERVICES,
    ),
    # ... initialised from tortoise_config ...
    accepts(
        "context-init",
        f"{CONTEXT}.init",
        NEW_SERVICES,
        args=("self",),
        kwargs=("config",),
        is_async=True,
    ),
    # ... whose client the handlers take with db() ...
    overrides("context-db", f"{CONTEXT}.db", "(self, connection_name=...)", NEW_SERVICES),
    # ... and closed on shutdown.
    overrides(
        "context-close", f"{CONTEXT}.close_connections", "(self)", NEW_SERVICES, is_async=True
    ),
    # The registrations' created_at default, imported from a non-top-level module.
    exists("db-default-now", "tortoise.fields.db_defaults.Now", NEW_REGISTRATIONS, kind=type),
    # === asyncpg ===
    # A type-only import from a non-top-level module.
    exists("pool-connection-proxy", "asyncpg.pool.PoolConnectionProxy", LEGACY_DB, kind=type),
    # The pool options tortoise_config hands through Tortoise (minsize/maxsize become these) ...
    accepts(
        "create-pool-options",
        "asyncpg.create_pool",
        NEW_DB,
        args=(),
        kwargs=("min_size", "max_size", "reset"),
    ),
    # ... and the connection options create_pool passes on to each connect().
    accepts(
        "connect-options",
        "asyncpg.connect",
        NEW_DB,
        args=(),
        kwargs=("statement_cache_size", "server_settings", "ssl"),
        is_async=True,
    ),
)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
async def test_relied_on_name_is_unchanged(case: Case) -> None:
    failure: str | None = None
    try:
        await case.check()
    except Exception as exc:
        detail = str(exc) if isinstance(exc, Drift) else f"{type(exc).__name__}: {exc}"
        failure = (
            f"{case.library} changed {case.name}: {detail}\n"
            f"club-proxy relies on it in {', '.join(case.users)}.\n"
            f"Read {DOC} (case {case.id!r}) before changing that code or the version cap."
        )
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_relying_module_exists() -> None:
    # A failure message must point at code that is there: a module that moves
    # takes its cases' paths with it.
    root = Path(__file__).resolve().parents[1]
    missing = sorted({u for case in CASES for u in case.users if not (root / u).is_file()})
    assert missing == [], f"cases name modules that do not exist: {missing}"


def test_every_case_is_in_the_doc() -> None:
    doc = (Path(__file__).resolve().parents[1] / DOC).read_text(encoding="utf-8")
    absent = sorted(case.id for case in CASES if f"`{case.id}`" not in doc)
    assert absent == [], f"{DOC} does not list these cases: {absent}"
