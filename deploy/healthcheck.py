"""`python -m deploy.healthcheck [URL]`: exit 0 when URL answers 200, else 1 (Docker HEALTHCHECK).

URL defaults to the proxy's admin `/-/health` on `CLUB_PROXY_ADMIN_PORT` (9901).
The bearer token comes from `CLUB_PROXY_ADMIN_TOKEN` when set. Standard library
only, so it costs a fraction of a second every interval.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 2.0


def main(argv: list[str]) -> int:
    port = os.environ.get("CLUB_PROXY_ADMIN_PORT") or "9901"
    url = argv[0] if argv else f"http://127.0.0.1:{port}/-/health"
    request = urllib.request.Request(url)  # noqa: S310  (a fixed http URL or the operator's own)
    token = os.environ.get("CLUB_PROXY_ADMIN_TOKEN")
    if token and "/-/" in url:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            ok = response.status == 200  # noqa: PLR2004
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"unhealthy: {url}: {exc}\n")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
