"""The real new_services app with one seeded regression, as in-process factories for routes.yaml.

`new: {app: "tests.proxy.shadow.mutants:<name>", config_dir: ...}` builds
`new_services.app.create_app(settings)` and adds one middleware that spoils
the successful (200) JSON answers of one endpoint the way a careless port
would: a renamed key, a timestamp off by one second, a dropped list item, a
changed status, an extra or changed header, a list in another order.
`unmutated` is the real app as it is. Every factory is a module attribute of
its own, so a test picks its mutant in routes.yaml and shares no state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from new_services.app import create_app as create_new_app

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler, Middleware

    from legacy_compat import Settings

__all__ = ["MUTATIONS", "Mutation", "build", "unmutated"]

_OK: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Mutation:
    """What to spoil in the 200 answers of the endpoint `resource` (an aiohttp route pattern)."""

    resource: str
    body: Callable[[Any], Any] | None = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    charset: str | None = "utf-8"


def _rename_email(body: Any) -> Any:
    body["items"] = [
        {("mail" if key == "email" else key): value for key, value in item.items()}
        for item in body["items"]
    ]
    return body


def _later_start(body: Any) -> Any:
    body["starts_at"] += 1
    return body


def _drop_last(body: Any) -> Any:
    body["items"] = body["items"][:-1]
    return body


def _reverse(body: Any) -> Any:
    body["items"] = body["items"][::-1]
    return body


MUTATIONS: Final[Mapping[str, Mutation]] = {
    # GET /api/users: `email` is `mail` in every listed user.
    "renamed_key": Mutation(resource="/api/users", body=_rename_email),
    # GET /api/events/{id}: the start one second late (a timezone or rounding slip).
    "later_timestamp": Mutation(resource="/api/events/{id}", body=_later_start),
    # GET /api/events: the last event of the page is lost (an off-by-one LIMIT).
    "dropped_item": Mutation(resource="/api/events", body=_drop_last),
    # GET /api/users/{id}: 201 instead of 200.
    "changed_status": Mutation(resource="/api/users/{id}", status=201),
    # GET /api/users: a header legacy never sent.
    "added_header": Mutation(resource="/api/users", headers={"Cache-Control": "no-store"}),
    # GET /api/events/{id}: `application/json` without its charset (a bare web.Response).
    "changed_header": Mutation(resource="/api/events/{id}", charset=None),
    # GET /api/events: the page in reverse order (an ORDER BY lost).
    "reordered": Mutation(resource="/api/events", body=_reverse),
}


def _middleware(mutation: Mutation) -> Middleware:
    @web.middleware
    async def mutate(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = request.match_info.route.resource
        if (
            route is None
            or route.canonical != mutation.resource
            or response.status != _OK
            or not isinstance(response, web.Response)
            or response.body is None
        ):
            return response
        body = bytes(response.body)  # type: ignore[arg-type]  # a bytes payload: json_response
        if mutation.body is not None:
            body = orjson.dumps(mutation.body(orjson.loads(body)))
        spoiled = web.Response(
            body=body,
            status=mutation.status or response.status,
            content_type=mutation.content_type,
            charset=mutation.charset,
        )
        spoiled.headers.update(mutation.headers)
        return spoiled

    return mutate


def build(settings: Settings, mutation: Mutation | None) -> web.Application:
    """The real new_services app; with `mutation`, spoiled by it."""
    app = create_new_app(settings)
    if mutation is not None:
        # Outermost: it sees the answers the app's own error middleware made.
        app.middlewares.insert(0, _middleware(mutation))
    return app


def unmutated(settings: Settings) -> web.Application:
    return build(settings, None)


def renamed_key(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["renamed_key"])


def later_timestamp(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["later_timestamp"])


def dropped_item(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["dropped_item"])


def changed_status(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["changed_status"])


def added_header(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["added_header"])


def changed_header(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["changed_header"])


def reordered(settings: Settings) -> web.Application:
    return build(settings, MUTATIONS["reordered"])
