"""The proxy's exceptions.

    ProxyError                  root: anything the proxy itself refuses or cannot do
    ├── RoutesError             routes.yaml is unreadable or invalid (file, line, key)
    └── AppFactoryError         the in-process `new` app cannot be imported or built

A `RoutesError` raised by the loader carries every problem found in the file in
`.errors` (itself first), so `club-proxy check` can list them all at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AppFactoryError", "ProxyError", "RoutesError"]


class ProxyError(Exception):
    """The proxy failed."""


class RoutesError(ProxyError):
    """routes.yaml is invalid.

    Attributes:
        path: the routes file.
        line: 1-based line of the offending key or value (0 when not known).
        key: where in the document, e.g. ``routes[2].canary.weight`` (None: the file).
        message: the problem alone, without the location.
        errors: every problem found in the file, this one first.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int = 0,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        self.errors: tuple[RoutesError, ...] = (self,)
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = str(self.path) if self.path is not None else "routes"
        if self.line:
            where = f"{where}:{self.line}"
        if self.key:
            where = f"{where}: {self.key}"
        return f"{where}: {self.message}"

    @classmethod
    def collect(cls, errors: list[RoutesError]) -> RoutesError:
        """One exception for several problems: the first, with all of them in `.errors`."""
        first = errors[0]
        combined = cls(first.message, path=first.path, line=first.line, key=first.key)
        combined.errors = tuple(errors)
        if len(errors) > 1:
            more = len(errors) - 1
            combined.args = (f"{first} (and {more} more problem{'s' if more > 1 else ''})",)
        return combined


class AppFactoryError(ProxyError):
    """The in-process `new` application could not be imported or built."""
