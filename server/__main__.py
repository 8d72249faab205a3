"""Entry point: ``python -m server`` or ``aiplatform-server``. Only wires: settings, logging, run."""

from __future__ import annotations

import asyncio
import logging
import sys

import pydantic

from server.app import AddressInUse, serve
from server.settings import Settings, describe_settings_error


def main() -> None:
    """Start the gateway; a bad setting or a busy port stops it with one clear line."""
    try:
        settings = Settings.from_environment()
    except pydantic.ValidationError as error:
        sys.exit(f"aiplatform: {describe_settings_error(error)}")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except AddressInUse as error:
        sys.exit(f"aiplatform: {error}")


if __name__ == "__main__":
    main()
