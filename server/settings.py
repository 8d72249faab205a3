"""The gateway's settings: read once at start-up from the environment and ``.env``.

Nothing else reads ``os.environ``; the settings object is passed down through
constructors. The seed's variable names (``COZE_API_TOKEN``, ``COZE_API_BASE``,
``COZE_DEFAULT_BOT_ID``, ``COZE_DEFAULT_WORKFLOW_ID``) are kept as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class GatewaySettings(BaseSettings):
    """The server itself (variables prefixed ``AIP_``)."""

    model_config = SettingsConfigDict(env_prefix="AIP_", extra="ignore")

    address: str = Field("127.0.0.1:50051", description="host:port to listen on; port 0 picks a free port")
    grace_seconds: float = Field(10.0, ge=0, description="how long in-flight calls may finish on SIGTERM")
    demo_services: bool = Field(True, description="serve the echo and echo_workflow demo services")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    upstream_connect_timeout_seconds: float = Field(5.0, gt=0, description="TCP+TLS connect to an upstream")
    upstream_read_timeout_seconds: float = Field(
        120.0, gt=0, description="longest silence tolerated while waiting for an upstream's next bytes"
    )

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port, e.g. 127.0.0.1:50051 (got {value!r})")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")
        return value.upper()


class CozeSettings(BaseSettings):
    """The Coze account behind the ``coze`` and ``coze_workflow`` services (variables prefixed ``COZE_``)."""

    model_config = SettingsConfigDict(env_prefix="COZE_", extra="ignore")

    api_token: SecretStr | None = Field(None, description="personal access token; the services are not ready without")
    api_base: str = Field("https://api.coze.cn", description="https://api.coze.cn or https://api.coze.com")
    default_bot_id: str = Field("", description="bot used when a call names no parameters.bot_id")
    default_workflow_id: str = Field("", description="workflow used when a call names no workflow_id")

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, e.g. https://api.coze.cn (got {value!r})")
        return value.rstrip("/")


class Settings(BaseModel):
    """All settings, one nested model per concern."""

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    coze: CozeSettings = Field(default_factory=CozeSettings)

    @classmethod
    def from_environment(cls, env_file: Path | None = Path(".env")) -> Settings:
        """Read the environment, then ``env_file`` for variables the environment lacks."""
        return cls(
            gateway=GatewaySettings(_env_file=env_file),
            coze=CozeSettings(_env_file=env_file),
        )

    @property
    def log_level(self) -> int:
        """The logging level as the logging module wants it."""
        return logging.getLevelNamesMapping()[self.gateway.log_level]


def describe_settings_error(error: pydantic.ValidationError) -> str:
    """One line naming each bad variable, e.g. ``AIP_ADDRESS: must be host:port ...``."""
    prefixes = {GatewaySettings.__name__: "AIP_", CozeSettings.__name__: "COZE_"}
    prefix = prefixes.get(error.title, "")
    problems = []
    for item in error.errors():
        name = prefix + "_".join(str(part) for part in item["loc"]).upper()
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(problems)
