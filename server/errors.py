"""The one place that turns failures into gRPC statuses, with google.rpc details.

Typed gateway errors become the status their class stands for, with an
``ErrorInfo`` (reason, provider, upstream code and log id), a ``RetryInfo`` when
the upstream said when to retry, and a ``BadRequest`` for invalid input. Any
other exception is a bug: the caller gets INTERNAL with a generic message and an
error id, and the traceback goes to the log (grpc.aio would otherwise send the
exception's own text, secrets included, to the caller).

Whatever an upstream said (its error text, codes, log ids) reaches the caller and the log
only through ``Scrubber``: every credential the gateway holds is taken out, and the text is
cut to a bounded length, for every provider alike.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from providers.errors import (
    CallerLimitExceeded,
    GatewayError,
    InvalidRequest,
    LimitsUnavailable,
    Overloaded,
    PermissionDenied,
    RequestIncomplete,
    ServiceNotFound,
    ServiceNotReady,
    ShuttingDown,
    Unauthenticated,
    UpstreamAuthError,
    UpstreamConversationBusy,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

_LOGGER = logging.getLogger(__name__)

#: ``ErrorInfo.domain`` of every error the gateway reports.
ERROR_DOMAIN = "aiplatform.v1"

#: The longest status message a caller gets (and the gateway logs), whatever an upstream said:
#: far under grpc's 8 KB metadata limit, and room enough for a useful upstream message.
MAX_MESSAGE_CHARS = 1000
# A log line quotes a status message shorter still: one failure, one short line.
_LOGGED_MESSAGE_CHARS = 400
# What a cut message keeps of its end: UpstreamError puts the upstream's facts there.
_KEPT_TAIL_CHARS = 160
#: The longest ErrorInfo metadata value (an upstream code or log id).
MAX_METADATA_CHARS = 128
# An upstream or proxy that echoes the request's Authorization header: whatever credential it is.
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")


class Scrubber:
    """Takes the gateway's credentials out of text bound for a caller or a log, and bounds its length."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = tuple(sorted({secret for secret in secrets if secret}, key=len, reverse=True))

    def __call__(self, text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        text = _BEARER.sub(r"\1 [redacted]", text)
        if len(text) > limit:
            # Cut from the middle, after the secrets are out (no half secret survives the cut): the
            # head says what failed, the tail carries the upstream facts (provider, code, logid).
            tail = min(_KEPT_TAIL_CHARS, limit // 4)
            marker = f" …[{len(text) - limit} characters cut]… "
            text = f"{text[: limit - tail - len(marker)]}{marker}{text[-tail:]}"
        return text


# A negative grpc-retry-pushback-ms tells a client's retry policy not to retry this call.
_NO_RETRY = (("grpc-retry-pushback-ms", "-1"),)

# Most specific class first: the first match wins.
_STATUS_BY_ERROR: tuple[tuple[type[GatewayError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ServiceNotFound, grpc.StatusCode.NOT_FOUND),
    (ServiceNotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (CallerLimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LimitsUnavailable, grpc.StatusCode.UNAVAILABLE),
    # A time limit passed before the call could start; the caller may send it again.
    (RequestIncomplete, grpc.StatusCode.DEADLINE_EXCEEDED),
    # Another replica can take the call: UNAVAILABLE is what clients retry elsewhere.
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    # The gateway's own upstream credentials are its configuration, not the caller's;
    # UNAUTHENTICATED stays reserved for the caller's own key.
    (UpstreamAuthError, grpc.StatusCode.FAILED_PRECONDITION),
    (UpstreamNotFound, grpc.StatusCode.NOT_FOUND),
    # Clears when the other chat of the conversation ends: retry the whole turn later (RetryInfo).
    (UpstreamConversationBusy, grpc.StatusCode.ABORTED),
    (UpstreamRateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamInvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UpstreamRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
    # The upstream went silent past the gateway's own timeout: retryable, like a 504.
    (UpstreamTimeout, grpc.StatusCode.UNAVAILABLE),
    (UpstreamError, grpc.StatusCode.UNKNOWN),
    (GatewayError, grpc.StatusCode.UNKNOWN),
)


_Detail = (
    error_details_pb2.ErrorInfo
    | error_details_pb2.RetryInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.QuotaFailure
)


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    """A status ready to send: the code, the message, and the trailing metadata with details."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def status_for(error: Exception, scrub: Scrubber | None = None) -> ErrorStatus:
    """The status a caller gets for ``error``, its texts passed through ``scrub``."""
    scrub = scrub or Scrubber()
    if isinstance(error, NotImplementedError):
        # A generated servicer's method that a library left out (grpc_health's List): not a bug
        # worth a traceback, and UNIMPLEMENTED is what grpc answers for an unknown method.
        return _build(grpc.StatusCode.UNIMPLEMENTED, "method not implemented", [_error_info("UNIMPLEMENTED", {})])
    if not isinstance(error, GatewayError):
        error_id = uuid.uuid4().hex[:12]
        _LOGGER.error("unexpected error %s", error_id, exc_info=error)
        return _build(
            grpc.StatusCode.INTERNAL,
            f"internal error in the gateway (error id {error_id}; the gateway's log has the details)",
            [_error_info("INTERNAL", {"error_id": error_id})],
        )
    code = next(code for kind, code in _STATUS_BY_ERROR if isinstance(error, kind))
    metadata: dict[str, str] = {}
    details: list[_Detail] = []
    if isinstance(error, UpstreamError):
        metadata = {
            "provider": error.provider,
            "upstream_code": scrub(error.upstream_code, MAX_METADATA_CHARS),
            "log_id": scrub(error.log_id, MAX_METADATA_CHARS),
        }
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(error, InvalidRequest):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=scrub(error.field, MAX_METADATA_CHARS), description=scrub(error.description)
                    )
                ]
            )
        )
    if isinstance(error, CallerLimitExceeded):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=f"key:{error.key}", description=error.limit)
                ]
            )
        )
    details.insert(0, _error_info(error.reason, {key: value for key, value in metadata.items() if value}))
    # The gateway already retried what was worth retrying (providers/guard.py): tell clients'
    # retry policies not to multiply the upstream attempts (gRPC retry pushback, A6).
    pushback = _NO_RETRY if isinstance(error, UpstreamError) else ()
    return _build(code, scrub(error.message), details, pushback)


def _error_info(reason: str, metadata: dict[str, str]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def _build(
    code: grpc.StatusCode,
    message: str,
    details: list[_Detail],
    extra_metadata: tuple[tuple[str, str], ...] = (),
) -> ErrorStatus:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        status.details.add().Pack(detail)
    converted = rpc_status.to_status(status)
    return ErrorStatus(code, message, tuple(converted.trailing_metadata) + extra_metadata)


def end_with(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception, scrub: Scrubber | None = None
) -> ErrorStatus:
    """Set the call's status to the one for ``error`` (returned); the handler then returns, and grpc sends it.

    Not ``context.abort()``: grpc keeps the ``AbortError`` that abort raises on the call, and its
    traceback holds the frames that hold the request. That reference cycle is freed only by a full
    garbage collection, which the gateway's tuning makes rare: 300 refused 3 MB requests held a
    gigabyte. The error's own traceback is let go here too, for the same reason.
    """
    scrub = scrub or Scrubber()
    status = status_for(error, scrub)
    # Upstream trouble is the operator's business; a caller's bad input is only worth INFO.
    level = logging.WARNING if isinstance(error, UpstreamError) else logging.INFO
    _LOGGER.log(level, "%s failed: %s %s", method, status.code.name, scrub(status.message, _LOGGED_MESSAGE_CHARS))
    release_frames(error)
    context.set_code(status.code)
    context.set_details(status.message)
    context.set_trailing_metadata(status.trailing_metadata)
    return status


def release_frames(error: BaseException) -> None:
    """Drop the local variables of the finished frames in ``error``'s tracebacks (and its causes').

    A frame that raised an error it holds in a local (``error = X(); raise error``) makes a cycle
    that keeps the frame's request alive until a full collection; cleared frames hold nothing.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # frames still running are skipped
        current = current.__cause__ or current.__context__
