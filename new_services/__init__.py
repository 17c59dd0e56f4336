"""new_services: club-api's endpoints re-implemented on Tortoise ORM with typed DI.

Same database, same Redis cache (Packager format), same event stream as the
legacy app, and byte-identical answers; see docs/new_services.md. The proxy
builds it with `new_services.app:create_app(settings)`.
"""

from __future__ import annotations

from new_services.app import create_app

__all__ = ["create_app"]
