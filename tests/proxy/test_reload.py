"""Live reload: the watcher applies valid edits whole and never a partial or invalid file."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import TYPE_CHECKING

import pytest

from proxy.errors import RoutesError
from proxy.routing.reload import RoutesWatcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from proxy.routing.table import RouteTable

POLL = 0.02

HEAD = """\
version: 1
upstreams: {legacy: {url: "http://127.0.0.1:8080"}, other: {url: "http://127.0.0.1:8081"}}
default: legacy
routes:
"""


def content(routes: int, *, to: str = "legacy") -> bytes:
    lines = [f'  - {{id: r{n}, match: "GET /r{n}", to: {to}}}\n' for n in range(routes)]
    return (HEAD + "".join(lines)).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), timeout)


async def polls_pass(watcher: RoutesWatcher, count: int) -> None:
    """Wait until the watcher has polled `count` more times."""
    target = watcher._polls + count
    await wait_until(lambda: watcher._polls >= target)


@pytest.fixture
def routes_path(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    path = directory / "routes.yaml"
    path.write_bytes(content(1))
    return path


@pytest.fixture
async def watcher(routes_path: Path) -> AsyncIterator[RoutesWatcher]:
    async with RoutesWatcher(routes_path, poll_interval=POLL) as running:
        yield running


async def test_valid_edit_is_applied(watcher: RoutesWatcher, routes_path: Path) -> None:
    old = watcher.table
    assert watcher.last_result.trigger == "initial"
    routes_path.write_bytes(content(3))
    await wait_until(lambda: watcher.table.digest == digest(content(3)))
    assert watcher.table.match("GET", "/r2").route is not None
    assert old.match("GET", "/r2").route is None  # the old table is untouched
    assert (watcher.reload_successes, watcher.reload_failures) == (1, 0)
    result = watcher.last_result
    assert (result.ok, result.changed, result.trigger) == (True, True, "watch")


async def test_invalid_edit_keeps_the_last_good_table(
    watcher: RoutesWatcher, routes_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="proxy.routing.reload")
    good = watcher.table
    bad = content(2) + b"  - {id: r0, match: 'GET /dup', to: legacy}\n"
    routes_path.write_bytes(bad)
    await wait_until(lambda: watcher.reload_failures == 1)
    assert watcher.table is good
    result = watcher.last_result
    assert (result.ok, result.changed, result.digest) == (False, False, digest(bad))
    assert result.error is not None
    assert f"{routes_path}:7: routes[2]: duplicate route id 'r0'" in result.error
    [record] = [r for r in caplog.records if r.getMessage() == "proxy.routes_reload_failed"]
    assert record.error == result.error  # type: ignore[attr-defined]
    assert record.active_digest == good.digest  # type: ignore[attr-defined]

    await polls_pass(watcher, 15)  # more than the periodic re-read interval
    assert watcher.reload_failures == 1  # the same bad content is reported once

    routes_path.write_bytes(content(4))
    await wait_until(lambda: watcher.table.digest == digest(content(4)))
    assert watcher.last_result.ok


async def test_byte_by_byte_write_never_yields_a_partial_table(
    watcher: RoutesWatcher, routes_path: Path
) -> None:
    # Many prefixes of the new file are themselves valid (they end after a whole
    # route), so only the "unchanged across two polls" rule keeps them out.
    old_digest = watcher.table.digest
    new = content(40, to="other")
    seen: set[str] = set()
    writing = True

    async def observe() -> None:
        while writing:
            seen.add(watcher.table.digest)
            await asyncio.sleep(0)

    observer = asyncio.create_task(observe())
    polls_before = watcher._polls
    with routes_path.open("wb", buffering=0) as file:
        for i in range(len(new)):
            file.write(new[i : i + 1])
            await asyncio.sleep(0.001)
    polls_during = watcher._polls - polls_before
    await wait_until(lambda: watcher.table.digest == digest(new))
    writing = False
    await observer
    assert polls_during >= 20  # the watcher really looked at many partial states
    assert seen <= {old_digest, digest(new)}
    assert len(watcher.table.routes) == 40


async def test_rename_into_place(watcher: RoutesWatcher, routes_path: Path) -> None:
    staged = routes_path.with_name(".routes.yaml.tmp")
    staged.write_bytes(content(5))
    inode = routes_path.stat().st_ino
    staged.replace(routes_path)
    await wait_until(lambda: watcher.table.digest == digest(content(5)))
    assert routes_path.stat().st_ino != inode


async def test_replacement_with_same_size_and_mtime_is_seen(
    watcher: RoutesWatcher, routes_path: Path
) -> None:
    # Same length, same mtime, new inode: only the inode and directory tell.
    before = routes_path.stat()
    swapped = content(1).replace(b"/r0", b"/x0")
    assert len(swapped) == before.st_size
    staged = routes_path.with_name("routes.yaml.new")
    staged.write_bytes(swapped)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.replace(routes_path)
    await wait_until(lambda: watcher.table.digest == digest(swapped))


async def test_in_place_rewrite_hidden_from_stat_is_caught(
    watcher: RoutesWatcher, routes_path: Path
) -> None:
    # Same inode, size and mtime (a coarse-mtime filesystem): the periodic re-read finds it.
    before = routes_path.stat()
    swapped = content(1).replace(b"/r0", b"/y0")
    routes_path.write_bytes(swapped)
    os.utime(routes_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    await wait_until(lambda: watcher.table.digest == digest(swapped))


async def test_deleted_file_keeps_the_table(watcher: RoutesWatcher, routes_path: Path) -> None:
    good = watcher.table
    routes_path.unlink()
    await wait_until(lambda: watcher.reload_failures == 1)
    assert watcher.table is good
    assert watcher.last_result.error is not None
    assert "cannot read" in watcher.last_result.error
    routes_path.write_bytes(content(1))  # restored as it was
    await wait_until(lambda: watcher.last_result.ok)
    assert watcher.table is good
    assert not watcher.last_result.changed


def test_reload_now(routes_path: Path) -> None:
    watcher = RoutesWatcher(routes_path, poll_interval=POLL)  # not started: SIGHUP only
    same = watcher.reload()
    assert (same.ok, same.changed, same.trigger) == (True, False, "reload")
    routes_path.write_bytes(content(2))
    changed = watcher.reload()
    assert (changed.ok, changed.changed) == (True, True)
    assert watcher.table.digest == digest(content(2))
    routes_path.write_bytes(b"version: 1\n")
    failed = watcher.reload()
    assert not failed.ok
    assert failed.error is not None
    assert "missing required key 'upstreams'" in failed.error
    assert watcher.table.digest == digest(content(2))
    assert (watcher.reload_successes, watcher.reload_failures) == (2, 1)


async def test_explicit_reload_wins_over_a_slower_poll(routes_path: Path) -> None:
    watcher = RoutesWatcher(routes_path, poll_interval=POLL)
    routes_path.write_bytes(content(2))
    assert await watcher.poll() is None  # first sighting: wait for a second one
    polling = asyncio.create_task(watcher.poll())
    await asyncio.sleep(0)  # the poll has read content(2) and is parsing it in a thread
    routes_path.write_bytes(content(3))
    assert watcher.reload().changed
    assert await polling is None  # its older content is dropped
    assert watcher.table.digest == digest(content(3))


async def test_a_slower_poll_of_an_invalid_file_does_not_undo_an_explicit_reload(
    routes_path: Path,
) -> None:
    watcher = RoutesWatcher(routes_path, poll_interval=POLL)
    routes_path.write_bytes(b"version: 1\nroutes: nope\n")
    assert await watcher.poll() is None  # first sighting
    polling = asyncio.create_task(watcher.poll())
    await asyncio.sleep(0)  # the poll is parsing the invalid content in a thread
    routes_path.write_bytes(content(3))
    assert watcher.reload().changed
    assert await polling is None  # its older failure is dropped, not recorded
    assert watcher.last_result.ok
    assert (watcher.reload_successes, watcher.reload_failures) == (1, 0)


async def test_a_table_the_validator_refuses_is_a_failed_reload(routes_path: Path) -> None:
    # The seam `proxy.serving.app` fills with `proxy.serving.check.reload_errors` (tests/proxy/test_reload_app.py).
    def at_most_two_routes(table: RouteTable) -> list[str]:
        return [f"{len(table.routes)} routes"] if len(table.routes) > 2 else []

    watcher = RoutesWatcher(routes_path, poll_interval=POLL, validator=at_most_two_routes)
    good = watcher.table
    routes_path.write_bytes(content(3))
    assert await watcher.poll() is None  # first sighting
    refused = await watcher.poll()
    assert refused is not None
    assert (refused.ok, refused.error, refused.digest) == (False, "3 routes", digest(content(3)))
    assert watcher.table is good
    assert await watcher.poll() is None  # the same content is refused once
    assert watcher.reload().error == "3 routes"  # and by SIGHUP alike
    routes_path.write_bytes(content(2))
    assert watcher.reload().changed
    assert (watcher.reload_successes, watcher.reload_failures) == (1, 2)


def test_listeners_see_old_and_new(routes_path: Path) -> None:
    watcher = RoutesWatcher(routes_path, poll_interval=POLL)
    calls: list[tuple[str, str]] = []

    def broken(old: RouteTable, new: RouteTable) -> None:
        raise RuntimeError(old.digest + new.digest)

    watcher.add_listener(broken)
    watcher.add_listener(lambda old, new: calls.append((old.digest, new.digest)))
    first = watcher.table.digest
    routes_path.write_bytes(content(2))
    assert watcher.reload().ok
    assert calls == [(first, digest(content(2)))]


def test_an_invalid_initial_file_raises(routes_path: Path) -> None:
    routes_path.write_bytes(b"version: 1\nupstreams: {}\ndefault: nowhere\n")
    with pytest.raises(RoutesError, match="unknown target 'nowhere'"):
        RoutesWatcher(routes_path)


async def test_start_and_stop_are_idempotent(routes_path: Path) -> None:
    watcher = RoutesWatcher(routes_path, poll_interval=POLL)
    await watcher.start()
    task = watcher._task
    await watcher.start()
    assert watcher._task is task
    await watcher.stop()
    await watcher.stop()
    assert task is not None
    assert task.done()
