"""The failures a provider can report, as a small tree of typed exceptions.

Providers raise these and know nothing of gRPC; ``server/errors.py`` is the one
place that turns each into a gRPC status. The tree::

    GatewayError
    ├── InvalidRequest ............ the caller's request is wrong (names the field)
    ├── ServiceNotFound ........... no service of that name
    ├── ServiceNotReady ........... the service lacks configuration (e.g. a token)
    ├── Overloaded ................ the service is at its concurrency limit
    │   └── GatewayOverloaded ..... the gateway process is at its limit of calls in flight
    ├── RequestIncomplete ......... the caller's request did not arrive whole in time
    ├── ShuttingDown .............. the gateway ended the call at the end of its shutdown grace
    ├── Unauthenticated ........... no caller key, or one the gateway does not know
    ├── PermissionDenied .......... the caller's key may not call that service
    ├── CallerLimitExceeded ....... the caller's key is at one of its limits (names it)
    │   ├── CallerRateLimited ..... requests per minute
    │   ├── CallerOverloaded ...... concurrent calls
    │   └── TokenQuotaExceeded .... tokens per minute or per day
    ├── LimitsUnavailable ......... the shared limit store (Redis) cannot be reached
    └── UpstreamError ............. the upstream failed; carries provider, code, log id
        ├── UpstreamAuthError ..... the upstream rejected the gateway's own credentials
        ├── UpstreamInvalidRequest  the upstream found the request invalid
        ├── UpstreamNotFound ...... the upstream has no such bot / workflow / model
        ├── UpstreamRateLimited ... the upstream asked us to slow down
        ├── UpstreamRejected ...... the upstream refused the request for another reason
        ├── UpstreamConversationBusy  another chat is still running in the conversation
        ├── UpstreamUnavailable ... unreachable, 5xx, or the stream broke part-way
        └── UpstreamTimeout ....... the upstream did not answer in time

Every message is safe to show a caller: it never contains a secret.

Two facts on an ``UpstreamError`` decide whether the gateway may send the request again:
``transient`` (the condition may clear shortly) and ``unprocessed`` (the upstream provably
did no work for it: the request never reached it, or it refused the request before starting).
Only a failure that is both is retried (``providers/guard.py``): a retry after the upstream
started would run, and bill, the work twice.
"""

from __future__ import annotations

from typing import Any

#: How much of a caller's value a message quotes: enough to recognise it, never enough to
#: make a multi-megabyte status message, log line or metadata header out of it.
QUOTE_LIMIT = 64


def quote_input(value: str) -> str:
    """A caller's value as an error message quotes it: repr'd, at most QUOTE_LIMIT characters of it."""
    if len(value) <= QUOTE_LIMIT:
        return repr(value)
    return f"{value[:QUOTE_LIMIT]!r}… ({len(value)} characters)"


def input_name(value: str) -> str:
    """A caller's key as a field path names it (``parameters.<key>``): at most QUOTE_LIMIT characters.

    Unlike ``quote_input`` it is not repr'd (a path reads ``parameters.temperature``), so the
    characters that are not printable (NUL, newlines, escapes, U+2028) are escaped one by one as
    repr escapes them: a key must not break or forge a line of the log.
    """
    if len(value) <= QUOTE_LIMIT and value.isprintable():
        return value
    shown: list[str] = []
    used = 0  # characters of the name, escapes counted as they are shown
    for character in value[:QUOTE_LIMIT]:
        piece = character if character.isprintable() else repr(character)[1:-1]
        if used + len(piece) > QUOTE_LIMIT:
            break
        shown.append(piece)
        used += len(piece)
    name = "".join(shown)
    return name if len(shown) == len(value) else f"{name}…[{len(value)} characters]"


class GatewayError(Exception):
    """Base class of every failure the gateway reports to a caller on purpose."""

    #: A short, stable, UPPER_SNAKE reason, sent to callers in ``ErrorInfo.reason``.
    reason = "GATEWAY_ERROR"
    #: When set, how long the caller should wait before trying again (sent as RetryInfo).
    retry_after_seconds: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(GatewayError):
    """The caller's request is malformed; ``field`` names the offending field."""

    reason = "INVALID_REQUEST"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class ServiceNotFound(GatewayError):
    """No service is registered under the requested name."""

    reason = "SERVICE_NOT_FOUND"


class ServiceNotReady(GatewayError):
    """The service exists but lacks configuration it needs (a token, a base URL)."""

    reason = "SERVICE_NOT_READY"


class Overloaded(GatewayError):
    """The service is at its limit of concurrent calls; the call was refused at once."""

    reason = "OVERLOADED"
    #: A call ends every so often: trying again after this may well succeed (sent as RetryInfo).
    retry_after_seconds: float | None = 1.0


class GatewayOverloaded(Overloaded):
    """The gateway process is at its limit of calls in flight, all services together."""

    reason = "GATEWAY_OVERLOADED"


class RequestIncomplete(GatewayError):
    """The caller's request message did not arrive whole within the gateway's bound."""

    reason = "REQUEST_INCOMPLETE"


class ShuttingDown(GatewayError):
    """The gateway is shutting down and ended the call when its grace period ran out."""

    reason = "SHUTTING_DOWN"


class Unauthenticated(GatewayError):
    """The call carries no caller key, or one that is not configured."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    """The caller's key may not call the service it named."""

    reason = "PERMISSION_DENIED"


class CallerLimitExceeded(GatewayError):
    """A limit of the caller's key refused the call; ``limit`` names it (sent as QuotaFailure)."""

    reason = "CALLER_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, key: str, limit: str, retry_after_seconds: float | None) -> None:
        super().__init__(message)
        #: The key's name (never the key) and the limit's setting name, e.g. ``tokens_per_minute``.
        self.key = key
        self.limit = limit
        #: None when no retry can succeed (the call alone needs more than the limit allows).
        self.retry_after_seconds = retry_after_seconds


class CallerRateLimited(CallerLimitExceeded):
    """The key's requests per minute are spent."""

    reason = "RATE_LIMITED"


class CallerOverloaded(CallerLimitExceeded):
    """The key has as many calls in flight as it may."""

    reason = "CALLER_OVERLOADED"


class TokenQuotaExceeded(CallerLimitExceeded):
    """The call's reserved tokens do not fit in the key's tokens per minute or per day."""

    reason = "TOKEN_QUOTA_EXCEEDED"


class LimitsUnavailable(GatewayError):
    """The store that keeps the callers' limits (Redis) cannot be reached, and the gateway fails closed."""

    reason = "LIMITS_UNAVAILABLE"
    retry_after_seconds: float | None = 1.0


class UpstreamError(GatewayError):
    """The upstream AI service failed; carries what it told us about the failure."""

    reason = "UPSTREAM_ERROR"
    #: Whether the same request may succeed if sent again shortly.
    transient = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        upstream_code: str = "",
        log_id: str = "",
        retry_after_seconds: float | None = None,
        transient: bool | None = None,
        unprocessed: bool = False,
    ) -> None:
        self.provider = provider
        self.upstream_code = upstream_code
        self.log_id = log_id
        self.retry_after_seconds = retry_after_seconds
        if transient is not None:
            self.transient = transient
        #: True only when the upstream provably did no work for the request: it never reached
        #: the upstream (a connect failure), or the upstream answered with an error instead of
        #: starting (an error status or error body where a stream or result was due).
        self.unprocessed = unprocessed
        super().__init__(_with_upstream_facts(message, provider, upstream_code, log_id))


class UpstreamAuthError(UpstreamError):
    """The upstream rejected the gateway's own credentials: fix the gateway's configuration."""

    reason = "UPSTREAM_AUTH_FAILED"


class UpstreamInvalidRequest(UpstreamError):
    """The upstream found the request invalid (a parameter the caller passed through)."""

    reason = "UPSTREAM_INVALID_REQUEST"


class UpstreamNotFound(UpstreamError):
    """The upstream has no bot, workflow or model of the requested id."""

    reason = "UPSTREAM_NOT_FOUND"


class UpstreamRateLimited(UpstreamError):
    """The upstream refused the call because of a rate limit or quota."""

    reason = "UPSTREAM_RATE_LIMITED"
    transient = True


class UpstreamRejected(UpstreamError):
    """The upstream refused the request for a reason retrying will not fix."""

    reason = "UPSTREAM_REJECTED"


class UpstreamConversationBusy(UpstreamError):
    """Another chat is still running in the conversation (Coze 4016); it clears when that chat ends."""

    reason = "UPSTREAM_CONVERSATION_BUSY"
    # Not transient for the gateway's own retries: the other chat may run for minutes, so
    # the caller decides when to try again (RetryInfo says how soon it might succeed).
    #: Seconds a caller is told to wait when the upstream names no time of its own.
    default_retry_after_seconds = 1.0

    def __init__(self, message: str, **facts: Any) -> None:
        if facts.get("retry_after_seconds") is None:
            facts["retry_after_seconds"] = self.default_retry_after_seconds
        super().__init__(message, **facts)


class UpstreamUnavailable(UpstreamError):
    """The upstream was unreachable, answered 5xx, or broke the stream part-way."""

    reason = "UPSTREAM_UNAVAILABLE"
    transient = True


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the gateway's timeout."""

    reason = "UPSTREAM_TIMEOUT"


def connection_failed(provider: str, upstream: str, error: Exception, *, timed_out: bool) -> UpstreamError:
    """The error for a request that never reached the upstream: no connection could be made.

    Transient and unprocessed, so the guard may send the request again. ``upstream`` names it
    in the message ("Coze", "the upstream").
    """
    if timed_out:
        return UpstreamTimeout(
            f"could not connect to {upstream} in time ({type(error).__name__})",
            provider=provider,
            transient=True,
            unprocessed=True,
        )
    return UpstreamUnavailable(
        f"{upstream} is unreachable ({type(error).__name__})", provider=provider, unprocessed=True
    )


def _with_upstream_facts(message: str, provider: str, upstream_code: str, log_id: str) -> str:
    facts = [f"provider={provider}"]
    if upstream_code:
        facts.append(f"code={upstream_code}")
    if log_id:
        facts.append(f"logid={log_id}")
    return f"{message} ({', '.join(facts)})"
