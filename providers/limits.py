"""The per-service limits, declared once: each field's name is the setting's name, and its default the default.

The same names are ``AIP_<NAME>`` in the environment (every service's default, ``server/settings.py``)
and keys of a ``[services.<name>]`` table in the ``AIP_CONFIG`` file (one service's own); the guard
(``providers/guard.py``) applies them to every call, and the providers size their HTTP clients by them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """One service's limits."""

    #: Seconds to connect to an upstream (TCP and TLS).
    connect_timeout_seconds: float = 5.0
    #: Seconds from the call to the upstream's first event (for a unary call: to the whole answer).
    first_token_timeout_seconds: float = 120.0
    #: Seconds of the longest silence between two upstream events (also the HTTP clients' read timeout).
    idle_timeout_seconds: float = 120.0
    #: Seconds of the whole upstream call.
    total_timeout_seconds: float = 600.0
    #: Attempts for a transient failure the upstream did no work for (1: no retry).
    max_attempts: int = 3
    #: Calls in flight at once, per process; more are refused. One process holds 5,000 streams in under
    #: 500 MB (benchmarks/RESULTS.md), so 1,024 refuses only a runaway, like Envoy's per-cluster default.
    max_concurrent_calls: int = 1024
    #: Output tokens a call reserves in its caller key's token limits when it sets no ``max_tokens``
    #: (settled to what it really used when it ends; server/limits.py).
    reserved_output_tokens: int = 1024


#: Every limit at its default.
DEFAULT_LIMITS = ServiceLimits()
