"""aiohttp's web path: every request the fast lane does not relay itself.

`WebPath.handle` is the proxy app's catch-all handler: it streams requests
with bodies (`relay`), relays WebSockets (`websocket`) and answers `to: new`
in-process (`inprocess`, the app built by `appfactory`).
"""

from proxy.webpath.appfactory import build_new_app
from proxy.webpath.dispatch import WebPath
from proxy.webpath.inprocess import InProcessApp

__all__ = ["InProcessApp", "WebPath", "build_new_app"]
