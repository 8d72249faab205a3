"""Entry point: ``python -m server`` or ``aiplatform-server``. Only wires: settings, logging, run."""

from __future__ import annotations

import asyncio
import logging
import sys

import pydantic

from server.access_log import JsonFormatter
from server.app import AddressInUse, TracingUnavailable, check_tracing, serve
from server.metrics import MetricsAddressInUse
from server.settings import ConfigError, Settings, describe_settings_error
from server.workers import run_workers


def main() -> None:
    """Start the gateway; a bad setting or a busy port stops it with one clear line."""
    try:
        settings = Settings.from_environment()
    except pydantic.ValidationError as error:
        sys.exit(f"aiplatform: {describe_settings_error(error)}")
    except ConfigError as error:
        sys.exit(f"aiplatform: {error}")
    configure_logging(settings.log_level, settings.gateway.log_format)
    try:
        check_tracing(settings.gateway)
        if settings.gateway.workers > 1:
            sys.exit(run_workers(settings))
        asyncio.run(serve(settings))
    except (AddressInUse, MetricsAddressInUse, ConfigError, TracingUnavailable) as error:
        sys.exit(f"aiplatform: {error}")


def configure_logging(level: int, log_format: str = "text") -> None:
    """One log format for the gateway and its libraries (text, or JSON lines); no message contents ever."""
    handler = logging.StreamHandler()
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    logging.basicConfig(level=level, handlers=[handler])
    # cozepy's logger is kept to ERRORs through these handlers by providers/coze.py, which uses it.
    # httpx logs every upstream request (with its URL) at INFO: per-call noise, kept for DEBUG.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


if __name__ == "__main__":
    main()
