"""Deterministic seed data for the reference club-api.

The same `SeedSize` and `seed` always give the same rows, byte for byte, so
benchmarks and legacy-vs-new comparisons run on identical data. Rows go in
with COPY (`copy_records_to_table`) in one transaction; the registration
trigger is disabled meanwhile so a bulk load does not flood channel `events`.

Every seeded user gets a session whose bearer token is `seed-token-<id>`;
users and events 1..10 are always active, and events 1..10 keep 10 free places.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

import orjson

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "EventRow",
    "RegistrationRow",
    "SeedData",
    "SeedSize",
    "SessionRow",
    "UserRow",
    "generate",
    "load",
    "seed_token",
]

_FIRST = ("Anna", "Ivan", "Maria", "Oleg", "Elena", "Dmitri", "Sofia", "Pavel", "Анна", "Иван")
_LAST = ("Petrova", "Smirnov", "Ivanova", "Kuznetsov", "Popova", "Sokolov", "Орлова", "Волков")
_CITIES = ("Moscow", "Kazan", "Riga", "Tbilisi", "Almaty", "Berlin", "Санкт-Петербург")
_SPORTS = ("running", "tennis", "padel", "swimming", "cycling", "yoga", "football", "climbing")
_LEVELS = ("beginner", "intermediate", "advanced")
_VENUES = ("Central Park", "River Arena", "North Court", "Pool No. 3", "Спорткомплекс «Олимп»")
_KINDS = ("Morning", "Evening", "Weekend", "Open", "Junior", "Masters")
# Fixed instants keep the data reproducible whatever day the seed runs.
_USERS_FROM = datetime(2020, 1, 1, tzinfo=UTC)
# Naive on purpose: events.starts_at is `timestamp without time zone`.
_EVENTS_FROM = datetime(2025, 1, 6, 8, 0)  # noqa: DTZ001
_UPDATED_AT = datetime(2024, 12, 31, 12, 0, tzinfo=UTC)
_FIVE_YEARS = 5 * 365 * 86400
# Shares of the generated rows.
_NEWSLETTER = 0.4
_INACTIVE_USERS = 0.1
_INACTIVE_EVENTS = 0.2
_TINY_EVENTS = 0.05
# Users and events with ids up to this are always active, and those events
# keep FREE_PLACES places free, so the README's examples work at any size.
ALWAYS_ACTIVE = 10
FREE_PLACES = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedSize:
    """How many rows to generate (the defaults are the benchmark size)."""

    users: int = 10_000
    events: int = 1_000
    registrations: int = 50_000

    def __post_init__(self) -> None:
        if self.users < 1 or self.events < 1 or self.registrations < 0:
            msg = f"seed size needs users >= 1, events >= 1, registrations >= 0, got {self}"
            raise ValueError(msg)

    @classmethod
    def scaled(cls, scale: float) -> SeedSize:
        """The default size times `scale` (at least one user and one event)."""
        base = cls()
        return cls(
            users=max(1, round(base.users * scale)),
            events=max(1, round(base.events * scale)),
            registrations=round(base.registrations * scale),
        )


class UserRow(NamedTuple):
    id: int
    name: str
    email: str
    profile: str  # jsonb text
    active: bool
    created_at: datetime


class SessionRow(NamedTuple):
    token: str
    user_id: int
    created_at: datetime
    expires_at: datetime | None


class EventRow(NamedTuple):
    id: int
    title: str
    meta: str  # jsonb text
    starts_at: datetime  # naive
    capacity: int
    active: bool
    updated_at: datetime


class RegistrationRow(NamedTuple):
    id: int
    user_id: int
    event_id: int
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedData:
    """Rows ready for COPY; the field names of each row are the column names."""

    users: list[UserRow]
    sessions: list[SessionRow]
    events: list[EventRow]
    registrations: list[RegistrationRow]


# Load order (foreign keys) and the row type that names each table's columns.
_TABLES: dict[str, type[tuple[object, ...]]] = {
    "users": UserRow,
    "sessions": SessionRow,
    "events": EventRow,
    "registrations": RegistrationRow,
}


def seed_token(user_id: int) -> str:
    """The bearer token of a seeded user."""
    return f"seed-token-{user_id}"


def _user(rng: random.Random, user_id: int) -> UserRow:
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    profile = {
        "city": rng.choice(_CITIES),
        "level": rng.choice(_LEVELS),
        "sports": sorted(rng.sample(_SPORTS, rng.randint(1, 3))),
        "newsletter": rng.random() < _NEWSLETTER,
        "emergency_contact": {"name": rng.choice(_FIRST), "phone": f"+7900{user_id:07d}"},
    }
    created = _USERS_FROM + timedelta(seconds=rng.randrange(_FIVE_YEARS))
    active = rng.random() >= _INACTIVE_USERS or user_id <= ALWAYS_ACTIVE
    return UserRow(user_id, name, f"user{user_id}@club.example", _json(profile), active, created)


def _event(rng: random.Random, event_id: int, users: int) -> EventRow:
    sport = rng.choice(_SPORTS)
    title = f"{rng.choice(_KINDS)} {sport} #{event_id}"
    meta = {
        "sport": sport,
        "venue": {"name": rng.choice(_VENUES), "city": rng.choice(_CITIES)},
        "tags": sorted(rng.sample(_LEVELS, rng.randint(1, 2))),
        "price": {"amount": rng.choice((0, 500, 1000, 1500)), "currency": "EUR"},
        "organizer_id": rng.randint(1, users),
    }
    starts = _EVENTS_FROM + timedelta(days=rng.randrange(730), minutes=30 * rng.randrange(24))
    # About one event in twenty is tiny, so some events are full.
    tiny = rng.random() < _TINY_EVENTS and event_id > ALWAYS_ACTIVE
    capacity = rng.randint(3, 8) if tiny else rng.randint(20, 150)
    active = rng.random() >= _INACTIVE_EVENTS or event_id <= ALWAYS_ACTIVE
    return EventRow(event_id, title, _json(meta), starts, capacity, active, _UPDATED_AT)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _registrations(
    rng: random.Random, size: SeedSize, capacities: list[int], joined: list[datetime]
) -> list[RegistrationRow]:
    # Open events are kept in a list and swap-removed when full, so each pick is O(1).
    remaining = [min(cap, size.users) for cap in capacities]
    for i in range(min(ALWAYS_ACTIVE, len(remaining))):
        remaining[i] = min(capacities[i] - FREE_PLACES, size.users)
    open_events = [i for i, left in enumerate(remaining) if left > 0]
    taken: set[tuple[int, int]] = set()
    rows: list[RegistrationRow] = []
    while len(rows) < size.registrations and open_events:
        slot = rng.randrange(len(open_events))
        event = open_events[slot]
        user = rng.randrange(size.users)
        if (user, event) in taken:
            continue
        taken.add((user, event))
        created = joined[user] + timedelta(seconds=rng.randrange(86400 * 365))
        rows.append(RegistrationRow(len(rows) + 1, user + 1, event + 1, created))
        remaining[event] -= 1
        if remaining[event] == 0:
            open_events[slot] = open_events[-1]
            open_events.pop()
    return rows


def generate(size: SeedSize, *, seed: int = 42) -> SeedData:
    """Build every row in memory; the same arguments always give the same rows."""
    rng = random.Random(seed)  # noqa: S311  (reproducible test data, not security)
    users = [_user(rng, i) for i in range(1, size.users + 1)]
    events = [_event(rng, i, size.users) for i in range(1, size.events + 1)]
    joined = [row.created_at for row in users]
    registrations = _registrations(rng, size, [row.capacity for row in events], joined)
    sessions = [SessionRow(seed_token(row.id), row.id, row.created_at, None) for row in users]
    return SeedData(users=users, sessions=sessions, events=events, registrations=registrations)


async def load(conn: asyncpg.Connection, data: SeedData) -> dict[str, int]:
    """Replace every row of the club tables with `data`; returns the row counts.

    `conn` must be a plain asyncpg connection (COPY uses its built-in binary
    codecs: jsonb as text, timestamps as datetime).
    """
    async with conn.transaction():
        await conn.execute(
            "TRUNCATE registrations, sessions, events, users RESTART IDENTITY CASCADE"
        )
        await conn.execute("ALTER TABLE registrations DISABLE TRIGGER registrations_notify")
        for table, row_type in _TABLES.items():
            rows = getattr(data, table)
            columns = list(row_type._fields)  # type: ignore[attr-defined]
            await conn.copy_records_to_table(table, records=rows, columns=columns)
        await conn.execute("ALTER TABLE registrations ENABLE TRIGGER registrations_notify")
        for table in ("users", "events", "registrations"):
            # Identity columns were given explicit ids; move their sequences past them.
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
            )
    await conn.execute("ANALYZE users, sessions, events, registrations")
    return {table: len(getattr(data, table)) for table in _TABLES}
