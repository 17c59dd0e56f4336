"""club-proxy: the front door that moves club-api to new code one endpoint at a time.

The package is layered; each subpackage imports only those above it in this
list (tests/proxy/test_layout.py holds it to that, with no import cycles):

- `proxy.errors`: the exception tree (`ProxyError` and its children).
- `proxy.routing`: routes.yaml to an immutable route table, matching, canary
  buckets, live reload. No aiohttp.
- `proxy.upstream`: keep-alive pools and the thin client on aiohttp's client
  protocol, limits and timeouts, the upstream failure map.
- `proxy.telemetry`: the access log and Prometheus metrics.
- `proxy.core`: per-process state, the one target decision, header rules,
  request ids, the proxy's own answers.
- `proxy.webpath` and `proxy.fastlane`: the two request paths (aiohttp's web
  layer, and the lane below it for plain requests); neither imports the other.
- `proxy.serving`: the app, the server and its workers, connection classes,
  the admin API, `club-proxy check`.
- `proxy.__main__`: the `club-proxy` command.

docs/architecture.md draws the request paths.
"""
