"""Request ids: the client's X-Request-ID when it is plain, a fresh one otherwise."""

from __future__ import annotations

import itertools
import os
import re
import secrets
from typing import Final

__all__ = ["REQUEST_ID", "request_id_from"]

# What an inbound id (and the Via pseudonym) may be: short and plain.
REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")


class _RequestIds:
    """Fresh request ids: a random per-process prefix and a counter, 32 hex digits.

    Ids must be unique, not secret, so there is no random syscall per request
    (`secrets.token_hex` was one getrandom each). A forked child draws its own
    prefix, so two processes never share a sequence.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._counter = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def __next__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids: Final = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)


def request_id_from(value: str | None) -> str:
    """The inbound X-Request-ID when it is short and plain, a fresh one otherwise."""
    if value is not None and REQUEST_ID.fullmatch(value):
        return value
    return next(_request_ids)
