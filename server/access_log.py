"""The access log: one line per RPC, and the JSON log format (``AIP_LOG_FORMAT=json``).

A line says what was called and how it ended, never what was said: no message text, no
parameter values, no credentials. In text it reads ``StreamChat echo/echo OK 12.3 ms ...``; in
JSON every field is its own key, beside ``time``, ``level``, ``logger`` and ``message``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from server.interceptors import CallRecord
from server.usage import UsageSource

#: The access log's logger: route or silence it on its own (``logging.getLogger("aiplatform.access")``).
ACCESS_LOGGER = logging.getLogger("aiplatform.access")
# The LogRecord attribute that carries an access line's fields to the JSON formatter.
_FIELDS = "access"


class AccessLog:
    """Writes one INFO line per ended call (a CallInterceptor observer)."""

    def call_started(self, call: CallRecord) -> None:
        pass

    def call_ended(self, call: CallRecord) -> None:
        if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
            return
        fields = access_fields(call)
        ACCESS_LOGGER.info(
            "%s %s %s %.1f ms ttft=%s tokens=%d/%d%s caller=%s request_id=%s%s",
            fields["method"],
            f"{call.service}/{call.provider}" if call.service else "-",
            fields["code"],
            fields["duration_ms"],
            "-" if fields["ttft_ms"] is None else f"{fields['ttft_ms']:.1f}ms",
            call.input_tokens,
            call.output_tokens,
            "(estimated)" if call.usage_source is UsageSource.ESTIMATED else "",
            call.caller or "-",
            call.request_id,
            f" upstream_log_id={call.upstream_log_id}" if call.upstream_log_id else "",
            extra={_FIELDS: fields},
        )


def access_fields(call: CallRecord) -> dict[str, Any]:
    """The facts of one call as the access log's JSON carries them."""
    return {
        "method": call.method.rpartition("/")[2],
        "grpc_service": call.method.lstrip("/").rpartition("/")[0],
        "service": call.service,
        "provider": call.provider,
        "code": call.code.name,
        "reason": call.reason,
        "duration_ms": round(call.duration * 1000, 1),
        "ttft_ms": None if call.first_response is None else round((call.first_response - call.started) * 1000, 1),
        "messages_sent": call.messages_sent,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "usage_source": call.usage_source.name.lower(),
        "caller": call.caller,
        "request_id": call.request_id,
        "upstream_log_id": call.upstream_log_id,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
