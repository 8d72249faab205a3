"""Entry point: ``python -m server`` or ``aiplatform-server``. Only wires: settings, logging, run."""

from __future__ import annotations

import asyncio
import logging
import sys

import pydantic

from server.access_log import JsonFormatter
from server.app import AddressInUse, TracingUnavailable, check_tracing, serve
from server.callers import KEY_NAME, keygen_text
from server.metrics import MetricsAddressInUse
from server.settings import ConfigError, Settings, describe_settings_error
from server.workers import run_workers

_USAGE = """usage: aiplatform-server            start the gateway (settings: README, Configuration)
       aiplatform-server keygen [NAME] print a new caller key and the [keys.NAME] table for AIP_CONFIG"""


def main() -> None:
    """Start the gateway; a bad setting or a busy port stops it with one clear line."""
    arguments = sys.argv[1:]
    if arguments:
        sys.exit(_command(arguments))
    try:
        settings = Settings.from_environment()
        settings.check_exposure()
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


def _command(arguments: list[str]) -> int | str:
    """Run a sub-command; returns the exit status (a string: the error to print)."""
    if arguments[0] == "keygen" and len(arguments) <= 2:
        name = arguments[1] if len(arguments) == 2 else "my-team"
        if not KEY_NAME.match(name):
            return "aiplatform: a key name is a letter, then letters, digits, _ . or - (at most 64)"
        print(keygen_text(name), end="")
        return 0
    if arguments[0] in ("-h", "--help", "help"):
        print(_USAGE)
        return 0
    return f"aiplatform: unknown arguments {' '.join(arguments)!r}\n{_USAGE}"


def configure_logging(level: int, log_format: str = "text") -> None:
    """One log format for the gateway and its libraries (text, or JSON lines); no message contents ever."""
    handler = logging.StreamHandler()
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    logging.basicConfig(level=level, handlers=[handler])
    # cozepy's logger is kept to ERRORs through these handlers by providers/coze/__init__.py.
    # httpx logs every upstream request (with its URL) at INFO: per-call noise, kept for DEBUG.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


if __name__ == "__main__":
    main()
