"""Serving: the proxy app, the server and its workers, connection classes, admin API, check.

`create_app` builds the proxy application; `run` serves it (one process or
a supervisor with N workers); `ProxyAppRunner` puts the fast lane and the
proxy's connection handler in front of it; `create_admin_app` is the admin
API; `run_check` is `club-proxy check`.
"""

from proxy.serving.admin import create_admin_app
from proxy.serving.app import ServerLimits, create_app
from proxy.serving.check import run_check
from proxy.serving.protocol import ProxyAppRunner
from proxy.serving.server import ServeConfig, run

__all__ = [
    "ProxyAppRunner",
    "ServeConfig",
    "ServerLimits",
    "create_admin_app",
    "create_app",
    "run",
    "run_check",
]
