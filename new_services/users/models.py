"""Tortoise models over the legacy `users` and `sessions` tables (schema.sql is the truth)."""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model

from new_services.fields import TextKeyField, UTCDatetimeField

__all__ = ["Session", "User"]


class User(Model):
    """`users`: the club members."""

    id = fields.BigIntField(primary_key=True)
    name = fields.TextField()
    email = fields.TextField()
    profile: fields.Field[Any] = fields.JSONField(default=dict)
    active = fields.BooleanField(default=True)
    created_at = UTCDatetimeField()

    class Meta:
        app = "club"
        table = "users"


class Session(Model):
    """`sessions`: one bearer token per row; `expires_at` NULL never expires."""

    token = TextKeyField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "club.User", related_name="sessions", on_delete=fields.CASCADE
    )
    created_at = UTCDatetimeField()
    expires_at = UTCDatetimeField(null=True)

    class Meta:
        app = "club"
        table = "sessions"
