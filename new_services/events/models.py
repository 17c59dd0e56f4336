"""Tortoise model over the legacy `events` table (schema.sql is the truth)."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model

from new_services.fields import NaiveUTCDatetimeField, UTCDatetimeField

__all__ = ["Event"]


class Event(Model):
    """`events`; `starts_at` is a naive timestamp read as UTC wall-clock time."""

    id = fields.BigIntField(primary_key=True)
    title = fields.TextField()
    meta: fields.Field[Any] = fields.JSONField(default=dict)
    starts_at = NaiveUTCDatetimeField()
    capacity = fields.IntField()
    active = fields.BooleanField(default=True)
    updated_at = UTCDatetimeField()

    class Meta:
        app = "club"
        table = "events"
