"""Path normalisation for matching, and route path patterns.

Routing looks at a canonical form of the request path; forwarding always uses
the original bytes. The canonical form (docs/routes.md, "Matching"):

1. percent-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are
   decoded, every other escape is kept with upper-case hex (``%2f`` -> ``%2F``),
   so an encoded slash never splits a segment;
2. characters that are not allowed in a path are percent-encoded (UTF-8);
3. runs of slashes are merged into one (nginx ``merge_slashes on``);
4. ``.`` and ``..`` segments are resolved (RFC 3986 §5.2.4), never above the root.

A pattern is a canonical path whose segments may be ``{name}`` (exactly one
non-empty segment) or, last, ``{name*}`` (the rest of the path, possibly empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PARAM", "TAIL", "Pattern", "normalise", "param_value", "parse_pattern"]

PARAM = "{}"  # segment kinds in a Pattern besides literals
TAIL = "{*}"

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
# A character that must be percent-encoded in a canonical path.
_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def normalise(path: str) -> str:
    """The canonical form of a request path (see the module docstring)."""
    # The fast path, taken by nearly every request: nothing to decode, merge or resolve.
    if "%" not in path and "//" not in path and "/." not in path and not _UNSAFE.search(path):
        return path
    return _resolve_dots(_merge_slashes(_canonical_escapes(path)))


def _canonical_escapes(path: str) -> str:
    out: list[str] = []
    for char in _ESCAPE.sub(_decode_unreserved, path):
        if char in _PCHAR:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in _utf8(char))
    # A "%" not followed by two hex digits is not an escape: encode it too.
    return re.sub(r"%(?![0-9A-F]{2})", "%25", "".join(out))


def _utf8(char: str) -> bytes:
    # aiohttp decodes request bytes with surrogateescape: give those bytes back as they were.
    try:
        return char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogatepass")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else f"%{match[1].upper()}"


def _merge_slashes(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def _resolve_dots(path: str) -> str:
    if "/." not in path:
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def param_value(segment: str) -> str:
    """The decoded value of a matched canonical segment (``%2F`` becomes ``/``)."""
    return unquote(segment, errors="replace") if "%" in segment else segment


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed route path: `segments` holds canonical literals, PARAM or TAIL."""

    segments: tuple[str, ...]
    names: tuple[str, ...]  # parameter names in order, the tail last

    @property
    def shape(self) -> str:
        """The pattern with parameter names erased: equal shapes match the same paths."""
        return "/" + "/".join(self.segments)

    @property
    def literal(self) -> bool:
        return not self.names


def parse_pattern(text: str) -> Pattern:
    """Parse ``/api/users/{id}``; ValueError with a readable message when invalid."""
    if not text.startswith("/"):
        msg = f"path {text!r} must start with '/'"
        raise ValueError(msg)
    if "?" in text or "#" in text:
        msg = f"path {text!r} must not contain a query or fragment"
        raise ValueError(msg)
    parts = text.split("/")[1:]
    segments: list[str] = []
    names: list[str] = []
    for i, part in enumerate(parts):
        kind, name = _parse_segment(text, part, last=i == len(parts) - 1)
        if name is not None:
            if name in names:
                msg = f"path {text!r} uses the parameter {{{name}}} twice"
                raise ValueError(msg)
            names.append(name)
        segments.append(kind)
    return Pattern(segments=tuple(segments), names=tuple(names))


def _parse_segment(text: str, part: str, *, last: bool) -> tuple[str, str | None]:
    if part.startswith("{") and part.endswith("}"):
        inner = part[1:-1]
        tail = inner.endswith("*")
        name = inner.removesuffix("*")
        if not _NAME.fullmatch(name):
            msg = (
                f"path {text!r}: {part!r} is not a parameter; write {{name}} or a last "
                "{name*} (regular expressions are not supported)"
            )
            raise ValueError(msg)
        if tail and not last:
            msg = f"path {text!r}: the rest-of-path parameter {part!r} must be the last segment"
            raise ValueError(msg)
        return (TAIL if tail else PARAM), name
    if "{" in part or "}" in part:
        msg = f"path {text!r}: a parameter must be a whole segment, not {part!r}"
        raise ValueError(msg)
    if part in {".", ".."} or (part == "" and not last):
        msg = f"path {text!r} must be canonical (no '.', '..' or '//' segments)"
        raise ValueError(msg)
    canonical = normalise("/" + part)[1:]
    return canonical, None
