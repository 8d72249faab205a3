"""Coze's failures as the gateway's typed errors: business codes, error answers, and cozepy's and httpx's exceptions."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import cozepy
import httpx

from providers.errors import (
    UpstreamAuthError,
    UpstreamConversationBusy,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    connection_failed,
)

PROVIDER = "coze"
LOG_ID_HEADER = "x-tt-logid"

# Coze business codes (and the HTTP statuses cozepy reports in their place when
# a body is not JSON) by the failure they mean. Codes from Coze's error-code page.
_AUTH_CODES = frozenset({401, 403, 4100, 4101, 700012006})
_NOT_FOUND_CODES = frozenset({404, 4001, 4002, 4006, 4012, 4021, 4200, 4314})
_RATE_LIMIT_CODES = frozenset({429, 4008, 4009, 4013, 4020})
# 4300-4304: the file of an upload is refused (DOC-ERR "上传文件…"): what the caller sent.
_BAD_REQUEST_CODES = frozenset({400, 4000, 4003, 4004, 4005, 4010, 4105, 4300, 4301, 4302, 4303, 4304})
_REJECTED_CODES = frozenset({4011, 4014, 4015, 4019, 4022, 4102, 4315, 6003})
CONVERSATION_BUSY_CODE = 4016  # "a chat is already running in this conversation": clears when it ends
NOT_CANCELLABLE_CODE = 4104  # the chat to cancel has already ended


def coze_error(
    code: object, message: str, *, log_id: str = "", retry_after: str | None = None, unprocessed: bool = False
) -> UpstreamError:
    """The typed error for a Coze business code (or the HTTP status in its place).

    ``unprocessed`` says that Coze answered with this error instead of starting the work
    (see ``UpstreamError.unprocessed``).
    """
    number = code_number(code)
    facts: dict[str, Any] = {
        "provider": PROVIDER,
        "upstream_code": str(code or ""),
        "log_id": log_id,
        "unprocessed": unprocessed,
    }
    if number in _AUTH_CODES:
        return UpstreamAuthError(
            f"Coze rejected the gateway's credentials: {message}. Check COZE_API_TOKEN, "
            "and that COZE_API_BASE is the token's region (api.coze.cn or api.coze.com)",
            **facts,
        )
    if number in _NOT_FOUND_CODES:
        return UpstreamNotFound(message, **facts)
    if number in _RATE_LIMIT_CODES:
        return UpstreamRateLimited(message, retry_after_seconds=_seconds(retry_after), **facts)
    if number in _BAD_REQUEST_CODES:
        return UpstreamInvalidRequest(message, **facts)
    if number == CONVERSATION_BUSY_CODE:
        return UpstreamConversationBusy(message, retry_after_seconds=_seconds(retry_after), **facts)
    if number in _REJECTED_CODES:
        return UpstreamRejected(message, **facts)
    if 500 <= number < 600 or 5000 <= number < 6000:
        return UpstreamUnavailable(message, **facts)
    return UpstreamError(message, **facts)


def code_number(code: object) -> int:
    """A Coze code (or HTTP status) as a number; 0 when it is none."""
    try:
        return int(str(code))
    except ValueError:
        return 0


def is_rate_limit(code: object) -> bool:
    """Whether a Coze code (or HTTP status) says the request was refused for its rate, before any work."""
    return code_number(code) in _RATE_LIMIT_CODES


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def raise_for_json_error(response: httpx.Response) -> None:
    """Coze answers a failed stream request with a JSON body (often HTTP 200) instead of SSE."""
    if "event-stream" in response.headers.get("content-type", ""):
        return
    # An error answer where the stream was due: Coze did not start on the request.
    payload = json_object(await response.aread())
    raise error_answer(response, payload, instead_of="an event stream", unprocessed=lambda code: True)


def json_object(body: bytes) -> dict[str, Any] | None:
    """A body as a JSON object; None when it is not one."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def error_answer(
    response: httpx.Response,
    payload: dict[str, Any] | None,
    *,
    instead_of: str,
    unprocessed: Callable[[object], bool],
) -> UpstreamError:
    """The typed error for an answer that is an error: Coze's code, or the HTTP status when the body has none.

    ``unprocessed(code)`` says whether that answer proves Coze started nothing.
    """
    if payload is not None and payload.get("code"):
        code: object = payload.get("code")
        message = f"Coze: {payload.get('msg', '')}"
    else:
        code = response.status_code
        message = f"Coze answered HTTP {response.status_code} without {instead_of}"
    return coze_error(
        code,
        message,
        log_id=response.headers.get(LOG_ID_HEADER, ""),
        retry_after=response.headers.get("retry-after"),
        unprocessed=unprocessed(code),
    )


class Logged(Protocol):
    """What knows the log id of a call's answer (Coze's x-tt-logid), once there is one."""

    log_id: str


@contextlib.contextmanager
def map_coze_errors(call: Logged | None = None) -> Iterator[None]:
    """Translate httpx's exceptions into the gateway's error tree, with ``call``'s log id (none before an answer)."""
    try:
        yield
    except (httpx.ConnectTimeout, httpx.ConnectError) as error:
        raise connection_failed(PROVIDER, "Coze", error, timed_out=isinstance(error, httpx.ConnectTimeout)) from error
    except httpx.DecodingError as error:
        # A Content-Encoding the body does not match: the upstream (or a proxy) sent garbage.
        raise UpstreamUnavailable(
            f"Coze sent a body that does not decode ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.log_id if call is not None else "",
        ) from error
    except httpx.TimeoutException as error:
        raise UpstreamTimeout(
            f"Coze did not answer in time ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.log_id if call is not None else "",
        ) from error
    except httpx.TransportError as error:
        raise UpstreamUnavailable(
            f"Coze broke the connection ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.log_id if call is not None else "",
        ) from error


def describe(error: Exception) -> str:
    """An error for a log line: its class, and Coze's code and log id if any; never a body or message text."""
    if isinstance(error, cozepy.CozeAPIError):
        return f"{type(error).__name__} code={error.code} logid={error.logid}"
    return type(error).__name__
