"""Tortoise model over the legacy `registrations` table (schema.sql is the truth).

The table's trigger NOTIFYs channel `events` on every INSERT and DELETE,
whoever writes the row, so writes through this model reach legacy PgQueue
listeners with no extra code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tortoise import fields
from tortoise.fields.db_defaults import Now
from tortoise.models import Model

from new_services.fields import UTCDatetimeField

if TYPE_CHECKING:
    from new_services.events.models import Event
    from new_services.users.models import User

__all__ = ["Registration"]


class Registration(Model):
    """`registrations`: unique per (user, event); `created_at` is the database's now()."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "club.User", related_name="registrations", on_delete=fields.CASCADE
    )
    event: fields.ForeignKeyRelation[Event] = fields.ForeignKeyField(
        "club.Event", related_name="registrations", on_delete=fields.CASCADE
    )
    # Omitted from INSERT so PostgreSQL's DEFAULT now() stamps it, as for legacy writes.
    created_at = UTCDatetimeField(db_default=Now())

    class Meta:
        app = "club"
        table = "registrations"
        unique_together = (("user", "event"),)
