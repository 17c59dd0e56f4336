"""club-api request handlers: plain `async def handler(request)`, raw SQL via `api.pg.club`."""
