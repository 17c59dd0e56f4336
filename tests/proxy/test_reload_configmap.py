"""Live reload through a Kubernetes ConfigMap volume, laid out with plain symlinks.

The kubelet mounts a ConfigMap as a directory in which every key is a symlink
into `..data`, itself a symlink to a timestamped directory:

    routes.yaml -> ..data/routes.yaml
    ..data -> ..2024_01_01_00_00_00.000000001
    ..2024_01_01_00_00_00.000000001/routes.yaml

An update writes a new timestamped directory, points a `..data_tmp` symlink at
it, renames `..data_tmp` over `..data` (one atomic step) and deletes the old
directory. `routes.yaml` itself never changes: the watcher must follow the
symlinks each poll, not the file it first resolved. The production poll
interval (0.5 s) must bring the new table in within 2 seconds, the promise
docs/deploy.md makes for a ConfigMap edit reaching a replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from typing import TYPE_CHECKING

from proxy.routing.reload import RoutesWatcher

if TYPE_CHECKING:
    from pathlib import Path

DEADLINE = 2.0  # seconds from the swap to the new table being active

ROUTES = """\
version: 1
upstreams: {{legacy: {{url: "http://127.0.0.1:8080"}}, other: {{url: "http://127.0.0.1:8081"}}}}
default: legacy
routes:
  - {{id: users, match: "GET /api/users", to: {to}}}
"""


def content(to: str) -> bytes:
    return ROUTES.format(to=to).encode()


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet does it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    @property
    def file(self) -> Path:
        return self.root / "routes.yaml"

    def publish(self, data: bytes) -> None:
        """Write a new timestamped directory and swap `..data` to it atomically."""
        self.generation += 1
        target = f"..2024_01_01_00_00_00.{self.generation:09d}"
        (self.root / target).mkdir()
        (self.root / target / "routes.yaml").write_bytes(data)
        data_link = self.root / "..data"
        old = data_link.readlink() if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target)
        tmp.replace(data_link)  # rename(2): atomic
        if not self.file.is_symlink():
            self.file.symlink_to("..data/routes.yaml")
        if old is not None:
            shutil.rmtree(self.root / old)


async def wait_for_digest(watcher: RoutesWatcher, data: bytes) -> float:
    """Seconds until the watcher's table is `data`; fails after DEADLINE."""
    want = hashlib.sha256(data).hexdigest()
    started = time.monotonic()
    while watcher.table.digest != want:
        if time.monotonic() - started > DEADLINE:
            msg = f"not applied within {DEADLINE}s: {watcher.last_result}"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_configmap_symlink_swap_is_applied_within_two_seconds(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(content("legacy"))
    assert volume.file.is_symlink()
    async with RoutesWatcher(volume.file) as watcher:  # the production poll interval
        assert watcher.poll_interval == 0.5
        assert watcher.table.match("GET", "/api/users").target == "legacy"
        # Same size, new content: only the target of `..data` changes.
        for to in ("other", "legacy", "other"):
            volume.publish(content(to))
            await wait_for_digest(watcher, content(to))
            assert watcher.table.match("GET", "/api/users").target == to
            assert watcher.last_result.ok
        assert watcher.reload_failures == 0


async def test_a_broken_configmap_update_keeps_the_last_good_table(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(content("legacy"))
    async with RoutesWatcher(volume.file, poll_interval=0.05) as watcher:
        volume.publish(b"version: 1\nroutes: [")
        started = time.monotonic()
        while watcher.reload_failures == 0 and time.monotonic() - started < DEADLINE:
            await asyncio.sleep(0.02)
        assert watcher.reload_failures >= 1
        assert watcher.table.match("GET", "/api/users").target == "legacy"
        volume.publish(content("other"))
        await wait_for_digest(watcher, content("other"))
