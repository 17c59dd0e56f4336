"""What both request paths share: state, the target decision, header rules, answers.

`decide` (`proxy.core.decision`) is the one place a request's target is
chosen; `Proxy` (`proxy.core.state`) the per-process state and the one place
a finished request is recorded.
"""

from proxy.core.answers import REFUSED_METHODS, error_body
from proxy.core.decision import Decision, decide
from proxy.core.headers import ForwardingPolicy
from proxy.core.request_ids import request_id_from
from proxy.core.state import CLIENT_CLOSED, PROXY, Proxy

__all__ = [
    "CLIENT_CLOSED",
    "PROXY",
    "REFUSED_METHODS",
    "Decision",
    "ForwardingPolicy",
    "Proxy",
    "decide",
    "error_body",
    "request_id_from",
]
