"""`club-proxy compare`: replay recorded requests to legacy and new, offline, and judge new.

    club-proxy compare INPUT... --legacy URL (--new URL | --new-app module:factory
                       [--config-dir DIR]) [--routes routes.yaml] [--concurrency N]
                       [--noise SHARE] [--only ROUTE]... [--report DIR]
                       [--fail-under RATE] [--credential NAME=VALUE]...
                       [--progress-every SECONDS] [--include-writes DSN]

INPUT is a capture file or a HAR file (`proxy.shadow.records` tells them
apart). The requests are replayed by `proxy.shadow.replay` and judged by the
live shadow's engine and results, so the summary, `report.json` and
`report.html` speak the model of `/-/shadow`. Progress goes to stderr (a bar
on a terminal, a line every few seconds elsewhere), the summary to stdout.

Exit 0 when every route passes (match rate at or above `--fail-under`, else
the route's `verdict.min_match`, and no more requests failed on a side than
that bar allows), 1 otherwise, 2 for a usage or input error or a side that
does not answer at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import aiohttp
from yarl import URL

from proxy.errors import ProxyError
from proxy.routing.model import NewTarget
from proxy.routing.table import load_routes
from proxy.serving.shadowsite import ShadowSite
from proxy.shadow.candidate import CandidateClients
from proxy.shadow.progress import Progress
from proxy.shadow.records import read_records
from proxy.shadow.replay import Replay, RouteRules, Sides, survey
from proxy.shadow.results import ShadowBook
from proxy.shadow.runreport import build_report, format_summary, secret_forms, write_reports
from proxy.webpath.appfactory import build_new_app
from proxy.webpath.inprocess import InProcessApp

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

    from proxy.shadow.candidate import Endpoint
    from proxy.shadow.records import Recorded

__all__ = ["CompareError", "CompareOptions", "add_compare_command", "compare", "run_compare"]

PASSED: Final = 0
FAILED: Final = 1
USAGE: Final = 2
# How long each side has to answer the first request, before the run starts.
_PROBE_TIMEOUT: Final = 5.0
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class CompareError(ProxyError):
    """The comparison run cannot start: a usage or input error (exit 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareOptions:
    """A comparison run, validated (`from_args`)."""

    inputs: tuple[Path, ...]
    legacy: str
    new: str | None = None  # a URL; or
    new_app: str | None = None  # "module:factory", served in this process
    config_dir: Path | None = None
    routes: Path | None = None
    concurrency: int = 8
    noise: float | None = None  # None: each route's shadow noise (0.1 by default)
    only: frozenset[str] = frozenset()
    report: Path | None = None
    fail_under: float | None = None
    credentials: Mapping[str, str] | None = None  # lower-case header name -> value
    progress_every: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CompareOptions:
        if args.include_writes is not None:
            msg = (
                "--include-writes is NOT SUPPORTED YET: no write (POST, PUT, PATCH, DELETE) "
                "is ever replayed, since it would write to the sides' data; only GET, HEAD "
                "and OPTIONS are replayed and the rest are counted as unsafe_method"
            )
            raise CompareError(msg)
        if args.config_dir is not None and args.new_app is None:
            msg = "--config-dir goes with --new-app"
            raise CompareError(msg)
        _check_share("--noise", args.noise)
        _check_share("--fail-under", args.fail_under)
        if args.concurrency < 1:
            msg = f"--concurrency {args.concurrency}: at least 1"
            raise CompareError(msg)
        return cls(
            inputs=tuple(args.inputs),
            legacy=_side_url("--legacy", args.legacy),
            new=None if args.new is None else _side_url("--new", args.new),
            new_app=args.new_app,
            config_dir=args.config_dir,
            routes=args.routes,
            concurrency=args.concurrency,
            noise=args.noise,
            only=frozenset(args.only),
            report=args.report,
            fail_under=args.fail_under,
            credentials=_credentials(args.credential),
            progress_every=args.progress_every,
        )


def _check_share(flag: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        msg = f"{flag} {value}: a share between 0 and 1"
        raise CompareError(msg)


def _side_url(flag: str, text: str) -> str:
    url = URL(text)
    if url.scheme not in {"http", "https"} or not url.host:
        msg = f"{flag} {text!r}: not an http(s) URL"
        raise CompareError(msg)
    return text.rstrip("/")


def _credentials(pairs: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not value or _TOKEN.fullmatch(name) is None:
            msg = f"--credential {name!r}: expected NAME=VALUE, e.g. 'Authorization=Bearer token'"
            raise CompareError(msg)
        if name.lower() in found:
            msg = f"--credential {name}: given twice"
            raise CompareError(msg)
        found[name.lower()] = value
    return found


def add_compare_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `compare` to the CLI's subcommands."""
    parser = commands.add_parser(
        "compare", help="replay recorded requests to legacy and new and compare the answers"
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="capture or HAR")
    parser.add_argument("--legacy", required=True, metavar="URL", help="the primary side")
    new = parser.add_mutually_exclusive_group(required=True)
    new.add_argument("--new", metavar="URL", help="the candidate side")
    new.add_argument("--new-app", metavar="MODULE:FACTORY", help="the candidate, in-process")
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="legacy config for --new-app's factory"
    )
    parser.add_argument(
        "--routes", type=Path, metavar="FILE", help="routes.yaml: route ids and shadow rules"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="requests in flight (8)"
    )
    parser.add_argument(
        "--noise",
        type=float,
        metavar="SHARE",
        help="share asked of legacy twice (default: each route's, 0.1)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="ROUTE", help="this route only (repeatable)"
    )
    parser.add_argument("--report", type=Path, metavar="DIR", help="write report.json and .html")
    parser.add_argument(
        "--fail-under", type=float, metavar="RATE", help="default: each route's min_match"
    )
    parser.add_argument(
        "--credential",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="sent instead of a redacted NAME header value (repeatable)",
    )
    parser.add_argument(
        "--progress-every", type=float, default=10.0, metavar="SECONDS", help="off a terminal"
    )
    parser.add_argument("--include-writes", metavar="DSN", help="not supported yet (refused)")


def run_compare(args: argparse.Namespace) -> int:
    """The `compare` command of the CLI: the exit code."""
    return asyncio.run(compare(args, out=sys.stdout, err=sys.stderr, terminal=sys.stderr.isatty()))


async def compare(args: argparse.Namespace, *, out: TextIO, err: TextIO, terminal: bool) -> int:
    """Run the comparison `args` describe and report it; the exit code.

    `out` gets the summary, `err` the progress (a bar when `terminal`) and
    the messages of usage and input errors (exit 2).
    """
    try:
        options = CompareOptions.from_args(args)
        return await _compare(options, out=out, err=err, terminal=terminal)
    # CompareError, RecordError, RoutesError, AppFactoryError; OSError: the report's directory.
    except (ProxyError, OSError) as exc:
        err.write(f"club-proxy compare: {exc}\n")
        return USAGE


async def _compare(options: CompareOptions, *, out: TextIO, err: TextIO, terminal: bool) -> int:
    rules = RouteRules(None if options.routes is None else load_routes(options.routes))
    found = survey(options.inputs, rules)
    _check_inputs(options, found.counts)
    for name, n in sorted(found.masked.items()):
        if name not in (options.credentials or {}):
            err.write(
                f"club-proxy compare: warning: {n} requests carry a redacted {name} value and "
                f"no --credential {name}=...: they are sent with the mask\n"
            )
    selected = {r: s for r, s in found.routes.items() if not options.only or r in options.only}
    book = ShadowBook()
    book.configure(selected)
    started = _now()
    progress = Progress(
        total=sum(found.counts[r] for r in selected),
        stream=err,
        terminal=terminal,
        every=options.progress_every,
    )
    replay = await _replay(options, rules, book, progress)
    run = _run_json(options, started, found.total, replay)
    secrets = {f for v in (options.credentials or {}).values() for f in secret_forms(v)}
    report = await build_report(
        book, replay.latency, run, fail_under=options.fail_under, secrets=secrets
    )
    out.write(format_summary(report))
    if options.report is not None:
        write_reports(options.report, report, replay.latency)
        out.write(f"report: {options.report / 'report.json'}, {options.report / 'report.html'}\n")
    return PASSED if all(route["gate"]["passed"] for route in report["routes"]) else FAILED


async def _replay(
    options: CompareOptions, rules: RouteRules, book: ShadowBook, progress: Progress
) -> Replay:
    """Start the sides, check they answer, replay every input; the finished replay."""
    clients = CandidateClients(limit=options.concurrency)
    try:
        async with _new_side(options) as new:
            sides = Sides(legacy=(options.legacy, None), new=new)
            await _probe(clients, sides)
            replay = Replay(
                book=book,
                clients=clients,
                sides=sides,
                rules=rules,
                credentials=options.credentials or {},
                concurrency=options.concurrency,
                noise=options.noise,
                only=options.only,
                on_result=progress.result,
            )
            progress.start()
            try:
                await replay.run(_records(options.inputs))
            finally:
                await progress.close()
    finally:
        await clients.close()
    return replay


def _records(paths: Sequence[Path]) -> Iterator[Recorded]:
    for path in paths:
        yield from read_records(path)


def _check_inputs(options: CompareOptions, counts: Mapping[str, int]) -> None:
    if not counts:
        msg = f"no requests in {', '.join(map(str, options.inputs))}"
        raise CompareError(msg)
    unknown = sorted(options.only - set(counts))
    if unknown:
        msg = f"--only {', '.join(unknown)}: no request of this route in the inputs"
        raise CompareError(msg)


@contextlib.asynccontextmanager
async def _new_side(options: CompareOptions) -> AsyncIterator[Endpoint]:
    """The new side's endpoint: its URL, or the in-process app on a private Unix socket."""
    if options.new_app is None:
        yield (options.new or "", None)
        return
    app = InProcessApp(build_new_app(NewTarget(app=options.new_app, config_dir=options.config_dir)))
    try:
        await app.start()
    except Exception as exc:  # the app's own startup (user code): any failure is "cannot start"
        msg = f"--new-app {options.new_app}: the app did not start: {exc!r}"
        raise CompareError(msg) from exc
    site = ShadowSite(app)
    try:
        path = await site.start()
        yield ("http://new.shadow", path)
    finally:
        await site.close()
        await app.close()


async def _probe(clients: CandidateClients, sides: Sides) -> None:
    """Both sides answer something (any status) before the run starts."""
    for name, endpoint in (("legacy", sides.legacy), ("new", sides.new)):
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                await clients.fetch(endpoint, "GET", "/", (), max_body=64 * 1024)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            msg = f"the {name} side at {endpoint[0]} does not answer: {exc!r}"
            raise CompareError(msg) from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _run_json(options: CompareOptions, started: str, total: int, replay: Replay) -> dict[str, Any]:
    return {
        "inputs": [str(path) for path in options.inputs],
        "started": started,
        "finished": _now(),
        "requests": total,
        "replayed": replay.replayed,
        "excluded": replay.excluded,
        "skipped": {},  # filled from the routes
        "legacy": options.legacy,
        "new": options.new if options.new_app is None else f"app {options.new_app}",
        "noise": options.noise,
        "fail_under": options.fail_under,
    }
