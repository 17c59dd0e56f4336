"""Headers of two answers compared: by lower-case name, Set-Cookie by cookie.

The values of one name are compared as a sequence (order and repeats count).
Set-Cookie is compared cookie by cookie: a cookie is missing or extra by name,
then its attributes are compared (names lower-case; Domain and SameSite
values case-insensitively, Domain without a leading dot, which clients
ignore), and its value only when the rules ask: session ids differ on every
answer. Values of secret headers and cookies are shown masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.shadow._render import shorten
from proxy.shadow.model import Difference, DiffKind
from proxy.shadow.redact import ALWAYS_MASKED, mask, mask_header

if TYPE_CHECKING:
    from collections.abc import Sequence

    from proxy.shadow.model import CompareRules

__all__ = ["diff_headers", "group_headers", "parse_set_cookie"]

_SET_COOKIE = "set-cookie"


def group_headers(headers: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    """Values by lower-case name, in order."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.lower(), []).append(value)
    return grouped


def diff_headers(
    primary: dict[str, list[str]], candidate: dict[str, list[str]], rules: CompareRules
) -> list[Difference]:
    """Header differences at `headers.<name>` and `headers.set-cookie.<cookie>[.<attribute>]`."""
    ignored = rules.ignore_headers | {_SET_COOKIE}
    out: list[Difference] = []
    for name, values in primary.items():
        if name in ignored:
            continue
        other = candidate.get(name)
        if other is None:
            out.append(
                Difference(
                    path=f"headers.{name}", kind=DiffKind.MISSING, primary=_show(name, values)
                )
            )
        elif other != values:
            out.append(
                Difference(
                    path=f"headers.{name}",
                    kind=DiffKind.CHANGED,
                    primary=_show(name, values),
                    candidate=_show(name, other),
                )
            )
    out.extend(
        Difference(path=f"headers.{name}", kind=DiffKind.EXTRA, candidate=_show(name, values))
        for name, values in candidate.items()
        if name not in primary and name not in ignored
    )
    if _SET_COOKIE not in rules.ignore_headers:
        out += _diff_cookies(
            primary.get(_SET_COOKIE, []),
            candidate.get(_SET_COOKIE, []),
            values=rules.compare_cookie_values,
        )
    return out


def _show(name: str, values: list[str]) -> str:
    if name in ALWAYS_MASKED:
        values = [mask_header(name, value) for value in values]
    return shorten(", ".join(values))


@dataclass(frozen=True, slots=True)
class Cookie:
    """One Set-Cookie header: attribute names lower-case, a flag's value ""."""

    name: str
    value: str
    attributes: dict[str, str]
    header: str


def parse_set_cookie(header: str) -> Cookie:
    """The cookie a Set-Cookie value sets (RFC 6265 §5.2, leniently)."""
    pair, *parts = header.split(";")
    name, equals, value = pair.partition("=")
    if not equals:
        name, value = "", pair  # a pair without `=` is a value with an empty name
    attributes: dict[str, str] = {}
    for part in parts:
        key, _, raw = part.partition("=")
        key = key.strip().lower()
        if key:
            attributes[key] = _normal(key, raw.strip())  # the last of a repeated one wins
    return Cookie(name=name.strip(), value=value.strip(), attributes=attributes, header=header)


def _normal(attribute: str, value: str) -> str:
    if attribute == "domain":
        return value.lower().removeprefix(".")
    if attribute == "samesite":
        return value.lower()
    return value


def _by_name(headers: Sequence[str]) -> dict[str, list[Cookie]]:
    cookies: dict[str, list[Cookie]] = {}
    for header in headers:
        cookie = parse_set_cookie(header)
        cookies.setdefault(cookie.name, []).append(cookie)
    return cookies


def _diff_cookies(
    primary: Sequence[str], candidate: Sequence[str], *, values: bool
) -> list[Difference]:
    if primary == candidate:
        return []
    ours, theirs = _by_name(primary), _by_name(candidate)
    out: list[Difference] = []
    for name in [*ours, *(name for name in theirs if name not in ours)]:
        mine, other = ours.get(name, []), theirs.get(name, [])
        path = f"headers.set-cookie.{name}"
        # A name set twice (other paths or domains): the n-th against the n-th.
        for cookie, match in zip(mine, other, strict=False):
            out += _diff_cookie(cookie, match, path, values=values)
        out.extend(
            Difference(path=path, kind=DiffKind.MISSING, primary=_show_cookie(c))
            for c in mine[len(other) :]
        )
        out.extend(
            Difference(path=path, kind=DiffKind.EXTRA, candidate=_show_cookie(c))
            for c in other[len(mine) :]
        )
    return out


def _show_cookie(cookie: Cookie) -> str:
    return shorten(mask_header(_SET_COOKIE, cookie.header).strip())


def _diff_cookie(
    primary: Cookie, candidate: Cookie, path: str, *, values: bool
) -> list[Difference]:
    out: list[Difference] = []
    if values and primary.value != candidate.value:
        out.append(
            Difference(
                path=path,
                kind=DiffKind.CHANGED,
                primary=mask(primary.value),
                candidate=mask(candidate.value),
            )
        )
    mine, other = primary.attributes, candidate.attributes
    for attribute, value in mine.items():
        theirs = other.get(attribute)
        at = f"{path}.{attribute}"
        if theirs is None:
            out.append(Difference(path=at, kind=DiffKind.MISSING, primary=value or attribute))
        # Expires is a date the server computes from its own clock when it
        # answers (now + lifetime): two answers a second apart differ though the
        # cookie is the same. Its presence still counts; Max-Age holds the lifetime.
        elif theirs != value and attribute != "expires":
            out.append(Difference(path=at, kind=DiffKind.CHANGED, primary=value, candidate=theirs))
    out.extend(
        Difference(path=f"{path}.{attribute}", kind=DiffKind.EXTRA, candidate=value or attribute)
        for attribute, value in other.items()
        if attribute not in mine
    )
    return out
