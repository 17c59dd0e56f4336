"""YAML with line numbers: composed nodes wrapped so every error names file, line and key.

`yaml.compose` (not `safe_load`) keeps each node's `start_mark`; `Node` walks
that tree with typed accessors that raise `RoutesError` at the right place.
Scalars are resolved by the safe (YAML 1.1 core) rules, so `2` is an int and
`"2"` a string, and duplicate mapping keys are errors rather than "last wins".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from proxy.errors import RoutesError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from pathlib import Path

__all__ = ["Node", "compose"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"

# Contexts whose mark is the start of the broken construct (`_syntax_error`).
_CONSTRUCT_CONTEXTS = ("while parsing a flow", "while scanning a")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}


def compose(data: bytes, path: Path) -> Node:
    """Parse one YAML document into a `Node` tree (RoutesError on syntax errors)."""
    try:
        root = yaml.compose(data, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, data, path) from exc
    except yaml.YAMLError as exc:
        msg = f"invalid YAML: {exc}"
        raise RoutesError(msg, path=path) from exc
    if root is None:
        msg = "the file is empty"
        raise RoutesError(msg, path=path)
    return Node(raw=root, key="", path=path)


def _syntax_error(exc: yaml.MarkedYAMLError, data: bytes, path: Path) -> RoutesError:
    """A syntax error at the line of the broken construct.

    PyYAML's `problem_mark` is where it noticed the problem: for a construct
    left open (a flow mapping or sequence, a quoted scalar, a key without
    its colon) that is the next token, often on a later line. Its
    `context_mark` is then where the construct starts, the line to fix. In
    a block context the `context_mark` is the start of the enclosing block
    instead, and the problem mark is the broken line itself.
    """
    problem, context = exc.problem_mark, exc.context_mark
    detail = exc.problem or exc.context or "syntax error"
    mark = problem or context
    if (
        problem is not None
        and context is not None
        and exc.context is not None
        and exc.context.startswith(_CONSTRUCT_CONTEXTS)
        and context.line < problem.line
    ):
        mark = context
        noticed = f"line {problem.line + 1}, column {problem.column + 1}"
        detail = f"{detail} {exc.context} that starts on this line (noticed at {noticed})"
    elif problem is not None and _char_at(data, problem.line, problem.column) == "\t":
        detail = "a tab cannot indent YAML: indent with spaces"
    line = mark.line + 1 if mark is not None else 0
    return RoutesError(f"invalid YAML: {detail}", path=path, line=line)


def _char_at(data: bytes, line: int, column: int) -> str:
    lines = data.decode("utf-8", "replace").splitlines()
    text = lines[line] if line < len(lines) else ""
    return text[column : column + 1]


@dataclass(frozen=True, slots=True)
class Node:
    """One YAML node and where it is: `key` is a dotted path such as ``routes[2].to``."""

    raw: yaml.Node
    key: str
    path: Path

    @property
    def line(self) -> int:
        return int(self.raw.start_mark.line) + 1

    def error(self, message: str) -> RoutesError:
        return RoutesError(message, path=self.path, line=self.line, key=self.key or None)

    def child(self, raw: yaml.Node, key: str) -> Node:
        return Node(raw=raw, key=key, path=self.path)

    def entries(self) -> dict[str, Node]:
        """The mapping's values by key, any key allowed; duplicate keys are errors."""
        if not isinstance(self.raw, yaml.MappingNode):
            msg = f"must be a mapping, not {self._kind()}"
            raise self.error(msg)
        values: dict[str, Node] = {}
        for key_raw, value_raw in self.raw.value:
            name = self._key_name(key_raw)
            here = self.child(value_raw, f"{self.key}.{name}" if self.key else name)
            if name in values:
                msg = f"duplicate key {name!r}"
                raise here.error(msg)
            values[name] = here
        return values

    def mapping(
        self,
        *,
        required: Collection[str] = (),
        optional: Collection[str] = (),
        rejected: Mapping[str, str] | None = None,
    ) -> dict[str, Node]:
        """Like `entries`, but unknown (or `rejected`: key -> why) and missing keys are errors."""
        values = self.entries()
        for name, here in values.items():
            if rejected and name in rejected:
                raise here.error(rejected[name])
            if name not in required and name not in optional:
                allowed = ", ".join(sorted([*required, *optional]))
                msg = f"unknown key {name!r} (allowed: {allowed})"
                raise here.error(msg)
        if missing := [name for name in required if name not in values]:
            msg = f"missing required key {missing[0]!r}"
            raise self.error(msg)
        return values

    def _key_name(self, key_raw: yaml.Node) -> str:
        if not isinstance(key_raw, yaml.ScalarNode) or key_raw.tag != _STR:
            where = self.child(key_raw, self.key)
            msg = "mapping keys must be plain strings"
            raise where.error(msg)
        return str(key_raw.value)

    def sequence(self) -> list[Node]:
        if not isinstance(self.raw, yaml.SequenceNode):
            msg = f"must be a list, not {self._kind()}"
            raise self.error(msg)
        return [self.child(item, f"{self.key}[{i}]") for i, item in enumerate(self.raw.value)]

    def string(self) -> str:
        if not isinstance(self.raw, yaml.ScalarNode) or self.raw.tag != _STR:
            msg = f"must be a string, not {self._kind()}"
            raise self.error(msg)
        return str(self.raw.value)

    def integer(self) -> int:
        value = self._scalar()
        if self.raw.tag != _INT or not isinstance(value, int):
            msg = f"must be an integer, not {self._kind()}"
            raise self.error(msg)
        return value

    def number(self) -> float:
        value = self._scalar()
        if self.raw.tag not in {_INT, _FLOAT} or not isinstance(value, int | float):
            msg = f"must be a number, not {self._kind()}"
            raise self.error(msg)
        return float(value)

    def duration(self) -> float:
        """Seconds from ``2s``, ``500ms``, ``1.5m``, ``1h``, ``14d`` or a bare number of seconds."""
        if self.raw.tag in {_INT, _FLOAT}:
            seconds = self.number()
        else:
            match = _DURATION.fullmatch(self.string().strip())
            if match is None:
                msg = f"{self.raw.value!r} is not a duration (e.g. 2s, 500ms, 1.5)"
                raise self.error(msg)
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        if not seconds > 0 or seconds == float("inf"):
            msg = f"{self.raw.value!r} must be a positive duration"
            raise self.error(msg)
        return seconds

    def size(self) -> int:
        """Bytes from ``4MiB``, ``512KiB``, ``1MB`` or a bare integer."""
        if self.raw.tag == _INT:
            size = self.integer()
        else:
            match = _SIZE.fullmatch(self.string().strip())
            if match is None:
                msg = f"{self.raw.value!r} is not a size (e.g. 4MiB, 65536)"
                raise self.error(msg)
            size = int(match[1]) * _SIZE_UNITS[match[2]]
        if size <= 0:
            msg = f"{self.raw.value!r} must be a positive size"
            raise self.error(msg)
        return size

    def is_false(self) -> bool:
        """Whether this is YAML's `false` (`off` and `no` too, as YAML 1.1 reads them)."""
        return self.raw.tag == _BOOL and self._scalar() is False

    def _scalar(self) -> object:
        if not isinstance(self.raw, yaml.ScalarNode):
            msg = f"must be a scalar, not {self._kind()}"
            raise self.error(msg)
        try:
            return yaml.constructor.SafeConstructor().construct_object(self.raw)
        except (yaml.YAMLError, ValueError) as exc:
            msg = f"invalid value {self.raw.value!r}"
            raise self.error(msg) from exc

    def _kind(self) -> str:
        if isinstance(self.raw, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.raw, yaml.SequenceNode):
            return "a list"
        kinds = {_STR: "a string", _INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean"}
        if self.raw.tag == _NULL:
            return "empty (null)"
        return f"{kinds.get(self.raw.tag, self.raw.tag)} ({self.raw.value!r})"
