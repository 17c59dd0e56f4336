"""A second checkout of this repository, run side by side with the current code (BENCH_BASELINE).

The baseline's server is `python -m proxy ...` with this venv's Python, started
with `PYTHONPATH=<checkout>` and the checkout as working directory, so the
baseline's own `proxy` package shadows the editable install of this one (the
same dependencies, only the package differs). `verify` checks that: with the
same environment it imports every module of the package and fails unless each
one's file lies inside the checkout; `verify_running` checks the running
server's stack through py-spy (when installed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Checkout", "commit_of", "from_environment", "proxy_changed_since"]

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import proxy, proxy.__main__
for info in pkgutil.walk_packages(proxy.__path__, "proxy."):
    importlib.import_module(info.name)
files = sorted(
    m.__file__ for name, m in sys.modules.items()
    if (name == "proxy" or name.startswith("proxy.")) and getattr(m, "__file__", None)
)
print(json.dumps({"proxy": proxy.__file__, "files": files}))
"""


class Checkout:
    """Another working tree of the repository whose `proxy` package is run as the baseline."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not (self.root / "proxy" / "__main__.py").is_file():
            msg = f"BENCH_BASELINE={root}: no proxy/__main__.py there"
            raise SystemExit(msg)

    def env(self) -> dict[str, str]:
        """This process's environment with the checkout first on the import path."""
        return {**os.environ, "PYTHONPATH": str(self.root)}

    def command(self) -> list[str]:
        """The baseline's equivalent of the `club-proxy` console script."""
        return [sys.executable, "-m", "proxy"]

    def commit(self) -> str:
        """The checkout's short commit."""
        return commit_of(self.root)

    def verify(self) -> str:
        """`proxy.__file__` as the baseline's server sees it; fails unless all of it is the checkout's."""
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_ALL],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = json.loads(out)
        foreign = [f for f in found["files"] if not Path(f).resolve().is_relative_to(self.root)]
        if foreign or not Path(found["proxy"]).resolve().is_relative_to(self.root):
            msg = f"baseline imports code outside {self.root}: {found['proxy']}, {foreign}"
            raise SystemExit(msg)
        print(
            f"baseline: proxy.__file__ = {found['proxy']} "
            f"({len(found['files'])} proxy modules, all under {self.root})",
            flush=True,
        )
        return str(found["proxy"])

    def verify_running(self, pid: int) -> None:
        """With py-spy, check the running server's `proxy` frames are the checkout's files."""
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            return
        cmd = [str(spy), "dump", "--full-filenames", "--pid", str(pid)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        files = set(re.findall(r"\((/[^():]*/proxy/[^():]*\.py)", out))
        foreign = sorted(f for f in files if not Path(f).resolve().is_relative_to(self.root))
        if not files or foreign:
            msg = f"baseline server {pid} runs code outside {self.root}: {foreign or out}"
            raise SystemExit(msg)
        print(f"baseline server {pid}: its proxy frames are in {sorted(files)}", flush=True)

    @contextlib.contextmanager
    def inherited(self) -> Iterator[None]:
        """Children started meanwhile without env/cwd (bench._instructions) run the baseline."""
        before, cwd = os.environ.get("PYTHONPATH"), Path.cwd()
        os.environ["PYTHONPATH"] = str(self.root)
        os.chdir(self.root)
        try:
            yield
        finally:
            os.chdir(cwd)
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before


def from_environment() -> Checkout | None:
    """The BENCH_BASELINE checkout, or None when the variable is unset or empty."""
    path = os.environ.get("BENCH_BASELINE", "")
    return Checkout(Path(path)) if path else None


def commit_of(root: Path) -> str:
    """`root`'s short commit, with "+changes" when its proxy/ differs from it."""
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", "proxy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return _short_commit(root) + ("+changes" if dirty else "")


def proxy_changed_since(root: Path, commit: str) -> bool:
    """Whether `root`'s proxy/ (working tree) differs from `commit` (a `commit_of` answer)."""
    if commit.endswith("+changes"):
        return True  # started with uncommitted changes: cannot tell, say so
    cmd = ["git", "-C", str(root), "diff", "--quiet", commit, "--", "proxy"]
    return subprocess.run(cmd, check=False).returncode != 0


def _short_commit(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
