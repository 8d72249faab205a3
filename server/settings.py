"""The gateway's settings: read once at start-up from the environment, ``.env`` and ``AIP_CONFIG``.

Nothing else reads ``os.environ``; the settings object is passed down through
constructors. The seed's variable names (``COZE_API_TOKEN``, ``COZE_API_BASE``,
``COZE_DEFAULT_BOT_ID``, ``COZE_DEFAULT_WORKFLOW_ID``) are kept as they were.
The optional TOML file named by ``AIP_CONFIG`` declares more services; it names
the variables that hold their secrets and never holds a secret itself.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import grpc
import pydantic
from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from providers.base import ParameterSpec
from providers.catalog import DEFAULT_COZE_BASE_URL, DEFAULT_OPENAI_BASE_URL, ServiceConfig
from providers.limits import DEFAULT_LIMITS, ServiceLimits
from server.callers import KEY_NAME, KeyEntry
from server.convert import RequestLimits

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LOG_FORMATS = ("text", "json")
_TRACES_EXPORTERS = ("otlp", "console")


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, e.g. https://api.coze.cn (got {value!r})")
    return value.rstrip("/")


def _host_and_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:50051 (got {value!r})")
    return value


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{variable} {path}: cannot read the file ({error.strerror})") from error
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{variable} {path}: not a PEM file")
    return data


def _empty_is_unset(value: object) -> object:
    return None if value == "" else value


#: An http(s) URL without a trailing slash.
HttpURL = Annotated[str, AfterValidator(_http_url)]
#: A secret where an empty value (``COZE_API_TOKEN=`` in .env) means unset.
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_unset)]


#: The names of the per-service limits: fields of GatewaySettings (every service's) and of ServiceEntry (one's).
_LIMIT_NAMES = tuple(limit.name for limit in fields(ServiceLimits))
DEFAULT_REQUEST_LIMITS = RequestLimits()


class GatewaySettings(BaseSettings):
    """The server itself (variables prefixed ``AIP_``)."""

    # populate_by_name: the OTEL_* fields take their Python names in code (tests) as well.
    model_config = SettingsConfigDict(env_prefix="AIP_", extra="ignore", populate_by_name=True)

    address: str = Field("127.0.0.1:50051", description="host:port to listen on; port 0 picks a free port")
    config: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        None, description="TOML file declaring more services"
    )
    grace_seconds: float = Field(10.0, ge=0, description="how long in-flight calls may finish on SIGTERM")
    workers: int = Field(1, ge=1, le=64, description="server processes sharing the port (SO_REUSEPORT)")
    max_connection_age_seconds: float = Field(
        300.0, gt=0, description="after this, clients are asked to reconnect (and so find new replicas)"
    )
    demo_services: bool = Field(True, description="serve the echo and echo_workflow demo services")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("text", description="text, or json: one JSON object per line")
    metrics_address: str = Field("", description="host:port of the Prometheus /metrics endpoint; off when empty")
    reflection: bool = Field(
        True, description="serve gRPC reflection (grpcurl without the .proto); false in production"
    )
    allow_unauthenticated: bool = Field(
        False, description="allow listening on a non-loopback address with no caller keys configured"
    )
    redis_url: OptionalSecret = Field(
        None, description="redis://host:port/db: keep the keys' limits in Redis, shared by every replica"
    )
    redis_fail_open: bool = Field(
        False, description="with Redis unreachable, admit calls without limits (true) or refuse them (UNAVAILABLE)"
    )
    tls_cert_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        None, description="PEM certificate chain: serve TLS (with AIP_TLS_KEY_FILE)"
    )
    tls_key_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        None, description="PEM private key of AIP_TLS_CERT_FILE"
    )
    tls_client_ca_file: Annotated[Path | None, BeforeValidator(_empty_is_unset)] = Field(
        None, description="PEM CA certificates: require client certificates they signed (mTLS)"
    )
    tracing: Annotated[bool | None, BeforeValidator(_empty_is_unset)] = Field(
        None, description="OpenTelemetry traces; unset or empty: on when an OTLP endpoint is set (server/tracing.py)"
    )
    # The OpenTelemetry SDK reads every OTEL_* variable itself; these two are read here as well, to decide
    # whether tracing is on and where spans go, so that they work from .env too.
    otlp_endpoint: str = Field(
        "",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="the OTLP/gRPC collector spans are sent to, e.g. http://127.0.0.1:4317",
    )
    traces_exporter: str = Field(
        "otlp", validation_alias="OTEL_TRACES_EXPORTER", description="otlp, or console: spans as JSON on stdout"
    )
    # Every service's limits (a config-file service may set its own): ServiceLimits declares their
    # names, defaults and meanings (providers/limits.py); these fields add the bounds a setting must keep.
    connect_timeout_seconds: float = Field(DEFAULT_LIMITS.connect_timeout_seconds, gt=0)
    first_token_timeout_seconds: float = Field(DEFAULT_LIMITS.first_token_timeout_seconds, gt=0)
    idle_timeout_seconds: float = Field(DEFAULT_LIMITS.idle_timeout_seconds, gt=0)
    total_timeout_seconds: float = Field(DEFAULT_LIMITS.total_timeout_seconds, gt=0)
    max_attempts: int = Field(DEFAULT_LIMITS.max_attempts, ge=1, le=10)
    max_concurrent_calls: int = Field(DEFAULT_LIMITS.max_concurrent_calls, ge=1)
    reserved_output_tokens: int = Field(DEFAULT_LIMITS.reserved_output_tokens, ge=1)
    # A request's size limits: RequestLimits declares their names and defaults (server/convert.py).
    max_messages: int = Field(DEFAULT_REQUEST_LIMITS.max_messages, ge=1)
    max_message_bytes: int = Field(DEFAULT_REQUEST_LIMITS.max_message_bytes, ge=1)
    max_parameters_bytes: int = Field(DEFAULT_REQUEST_LIMITS.max_parameters_bytes, ge=1)
    max_part_bytes: int = Field(DEFAULT_REQUEST_LIMITS.max_part_bytes, ge=1)
    max_parts_bytes: int = Field(DEFAULT_REQUEST_LIMITS.max_parts_bytes, ge=1)
    max_receive_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest gRPC request accepted at all (RESOURCE_EXHAUSTED above)"
    )
    max_calls_in_flight: int = Field(
        6000, ge=1, description="calls in flight per process, all services together; more are refused at once"
    )
    request_arrival_timeout_seconds: float = Field(
        10.0, gt=0, description="how long a call's request may take to arrive whole (DEADLINE_EXCEEDED after)"
    )
    max_streams_per_connection: int = Field(
        2048, ge=1, description="concurrent calls on one HTTP/2 connection (its MAX_CONCURRENT_STREAMS)"
    )
    max_connection_idle_seconds: float = Field(
        120.0, gt=0, description="a connection without calls for this long is closed (GOAWAY)"
    )

    @property
    def tracing_on(self) -> bool:
        """Whether calls are traced: AIP_TRACING when set, else whether an OTLP endpoint is."""
        return self.tracing if self.tracing is not None else bool(self.otlp_endpoint)

    def request_limits(self) -> RequestLimits:
        """How large a request may be."""
        return RequestLimits(**{limit.name: getattr(self, limit.name) for limit in fields(RequestLimits)})

    def service_limits(self) -> ServiceLimits:
        """The limits every service starts from (the config file may set a service's own)."""
        return ServiceLimits(**{name: getattr(self, name) for name in _LIMIT_NAMES})

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        return _host_and_port(value)

    @model_validator(mode="after")
    def _tls_files_together(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("AIP_TLS_CERT_FILE and AIP_TLS_KEY_FILE go together: set both, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("AIP_TLS_CLIENT_CA_FILE needs AIP_TLS_CERT_FILE and AIP_TLS_KEY_FILE (mTLS is TLS first)")
        return self

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The TLS credentials to listen with, or None for plain text.

        Raises:
            ConfigError: a file cannot be read.
        """
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        cert = _read_pem(self.tls_cert_file, "AIP_TLS_CERT_FILE")
        key = _read_pem(self.tls_key_file, "AIP_TLS_KEY_FILE")
        client_ca = _read_pem(self.tls_client_ca_file, "AIP_TLS_CLIENT_CA_FILE") if self.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    @property
    def transport_security(self) -> str:
        """How the gateway listens, for its start-up line: "mTLS", "TLS" or "plaintext"."""
        if self.tls_client_ca_file is not None:
            return "mTLS"
        return "TLS" if self.tls_cert_file is not None else "plaintext"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        # Never quote the URL: it may carry a password.
        try:
            url = urlsplit(value.get_secret_value())
            port = url.port
        except ValueError:
            raise ValueError("is not a URL (redis://[:password@]host:port/db)") from None
        if url.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix:// (redis://[:password@]host:port/db)")
        if url.scheme != "unix" and not url.hostname:
            raise ValueError("names no host (redis://[:password@]host:port/db)")
        del port  # parsed only to check it
        return value

    @field_validator("metrics_address")
    @classmethod
    def _host_and_port_or_empty(cls, value: str) -> str:
        return _host_and_port(value) if value else value

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value.lower() not in _LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(_LOG_FORMATS)} (got {value!r})")
        return value.lower()

    @field_validator("traces_exporter")
    @classmethod
    def _known_exporter(cls, value: str) -> str:
        if value.lower() not in _TRACES_EXPORTERS:
            raise ValueError(f"must be one of {', '.join(_TRACES_EXPORTERS)} (got {value!r})")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")
        return value.upper()


class CozeSettings(BaseSettings):
    """The Coze account behind the ``coze``, ``coze_chatflow`` and ``coze_workflow`` services (prefix ``COZE_``)."""

    model_config = SettingsConfigDict(env_prefix="COZE_", extra="ignore")

    api_token: OptionalSecret = Field(None, description="personal access token; the services are not ready without")
    api_base: HttpURL = Field(DEFAULT_COZE_BASE_URL, description="https://api.coze.cn or https://api.coze.com")
    default_bot_id: str = Field("", description="bot used when a call names no parameters.bot_id")
    default_workflow_id: str = Field("", description="workflow used when a call names no workflow_id")


class OpenAISettings(BaseSettings):
    """The default OpenAI-compatible endpoint behind the ``openai`` service (variables prefixed ``OPENAI_``)."""

    model_config = SettingsConfigDict(env_prefix="OPENAI_", extra="ignore")

    api_key: OptionalSecret = Field(None, description="API key; the openai service is not ready without")
    base_url: HttpURL = Field(DEFAULT_OPENAI_BASE_URL, description="any OpenAI-compatible /v1 base URL")
    default_model: str = Field("", description="model used when a call names no parameters.model")


class ConfigError(ValueError):
    """The AIP_CONFIG file is unreadable or invalid; the message names the service and field."""


_SERVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_SECRET_KEYS = frozenset({"api_key", "token", "api_token", "secret", "password", "key"})


class InputEntry(BaseModel):
    """One ``[services.<name>.inputs.<input>]`` table: a workflow input parameter."""

    model_config = ConfigDict(extra="forbid")

    type: str = "string"
    description: str = ""
    required: bool = False


class ServiceEntry(BaseModel):
    """One ``[services.<name>]`` table of the AIP_CONFIG file."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    description: str = ""
    base_url: str = ""
    api_key_env: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")
    default_bot_id: str = ""
    default_workflow_id: str = ""
    default_model: str = ""
    # This service's own limits, under ServiceLimits' names and GatewaySettings' bounds; unset: the AIP_* one.
    connect_timeout_seconds: float | None = Field(None, gt=0)
    first_token_timeout_seconds: float | None = Field(None, gt=0)
    idle_timeout_seconds: float | None = Field(None, gt=0)
    total_timeout_seconds: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1, le=10)
    max_concurrent_calls: int | None = Field(None, ge=1)
    reserved_output_tokens: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputEntry] = Field(default_factory=dict)

    def limits(self, defaults: ServiceLimits) -> ServiceLimits:
        """``defaults`` with the limits this entry sets."""
        own = {name: getattr(self, name) for name in _LIMIT_NAMES}
        return replace(defaults, **{name: value for name, value in own.items() if value is not None})

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in _SECRET_KEYS:
                    raise ValueError(
                        f"{key!r} looks like a secret, and secrets do not belong in the file: "
                        "put it in an environment variable and name that variable in api_key_env"
                    )
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url_when_set(cls, value: str) -> str:
        return _http_url(value) if value else value


class ServiceFile(BaseModel):
    """The AIP_CONFIG file: named services, and caller keys (``server/callers.py``)."""

    model_config = ConfigDict(extra="forbid")

    services: dict[str, ServiceEntry] = Field(default_factory=dict)
    keys: dict[str, KeyEntry] = Field(default_factory=dict)

    @field_validator("keys")
    @classmethod
    def _key_names(cls, keys: dict[str, KeyEntry]) -> dict[str, KeyEntry]:
        for name in keys:
            if not KEY_NAME.match(name):
                raise ValueError(f"{name!r}: a key name is a letter, then letters, digits, _ . or - (at most 64)")
        digests = [entry.sha256.lower() for entry in keys.values()]
        if len(set(digests)) != len(digests):
            raise ValueError("two keys have the same sha256: each caller needs a key of its own")
        return keys


class Settings(BaseModel):
    """All settings, one nested model per concern."""

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    coze: CozeSettings = Field(default_factory=CozeSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    #: Services declared in the AIP_CONFIG file, secrets resolved.
    file_services: tuple[ServiceConfig, ...] = ()
    #: Caller keys declared in the AIP_CONFIG file, by name; none: the gateway runs open.
    caller_keys: dict[str, KeyEntry] = Field(default_factory=dict)

    @classmethod
    def from_environment(cls, env_file: Path | None = Path(".env")) -> Settings:
        """Read the environment, then ``env_file`` for variables the environment lacks, then AIP_CONFIG.

        Raises:
            pydantic.ValidationError: a variable has a bad value.
            ConfigError: the AIP_CONFIG file is unreadable or invalid.
        """
        gateway = GatewaySettings(_env_file=env_file)
        variables = _variables(env_file)
        config_file = read_config_file(gateway.config) if gateway.config else ServiceFile()
        return cls(
            gateway=gateway,
            coze=CozeSettings(_env_file=env_file),
            openai=OpenAISettings(_env_file=env_file),
            file_services=file_service_configs(config_file, variables, gateway),
            caller_keys=config_file.keys,
        )

    def check_exposure(self) -> None:
        """Refuse (ConfigError) to listen beyond this host with no caller keys, unless that is allowed.

        Raises:
            ConfigError: the address is not a loopback one, no key is configured and
                AIP_ALLOW_UNAUTHENTICATED is not true.
        """
        gateway = self.gateway
        if self.caller_keys or gateway.allow_unauthenticated or is_loopback(gateway.address):
            return
        raise ConfigError(
            f"AIP_ADDRESS {gateway.address} is reachable from other hosts and no caller keys are configured: "
            "configure [keys.<name>] in the AIP_CONFIG file (aiplatform-server keygen), or set "
            "AIP_ALLOW_UNAUTHENTICATED=true if the network in front of the gateway admits only its callers"
        )

    def service_configs(self) -> list[ServiceConfig]:
        """Every service to serve: the built-in ones from the environment, then the file's.

        A file service with the name of a built-in one replaces it.
        """
        gateway, coze, openai = self.gateway, self.coze, self.openai
        limits = gateway.service_limits()
        coze_account: dict[str, Any] = {
            "base_url": coze.api_base,
            "api_key": coze.api_token.get_secret_value() if coze.api_token else None,
            "api_key_env": "COZE_API_TOKEN",
            "limits": limits,
        }
        configs = [
            ServiceConfig("coze", "coze", default_bot_id=coze.default_bot_id, **coze_account),
            ServiceConfig(
                "coze_chatflow", "coze_chatflow", default_workflow_id=coze.default_workflow_id, **coze_account
            ),
            ServiceConfig(
                "coze_workflow", "coze_workflow", default_workflow_id=coze.default_workflow_id, **coze_account
            ),
            ServiceConfig(
                "openai",
                "openai",
                base_url=openai.base_url,
                api_key=openai.api_key.get_secret_value() if openai.api_key else None,
                api_key_env="OPENAI_API_KEY",
                default_model=openai.default_model,
                limits=limits,
            ),
        ]
        if gateway.demo_services:
            configs += [
                ServiceConfig("echo", "echo", limits=limits),
                ServiceConfig("echo_workflow", "echo_workflow", limits=limits),
            ]
        by_name = {config.name: config for config in configs}
        by_name.update((config.name, config) for config in self.file_services)
        return list(by_name.values())

    @property
    def log_level(self) -> int:
        """The logging level as the logging module wants it."""
        return logging.getLevelNamesMapping()[self.gateway.log_level]


def load_service_file(path: Path, variables: Mapping[str, str], gateway: GatewaySettings) -> tuple[ServiceConfig, ...]:
    """The services the TOML file at ``path`` declares; secrets come from ``variables``."""
    return file_service_configs(read_config_file(path), variables, gateway)


def read_config_file(path: Path) -> ServiceFile:
    """The AIP_CONFIG file at ``path``, checked (ConfigError names the file and each problem)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"AIP_CONFIG {path}: cannot read the file ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"AIP_CONFIG {path}: not valid TOML ({error})") from error
    try:
        parsed = ServiceFile.model_validate(document)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {str(item['msg']).removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise ConfigError(f"AIP_CONFIG {path}: {problems}") from error
    for name in parsed.services:
        if not _SERVICE_NAME.match(name):
            raise ConfigError(
                f"AIP_CONFIG {path}: services.{name}: a service name is a letter, then letters, digits, _ . or -"
            )
    return parsed


def file_service_configs(
    parsed: ServiceFile, variables: Mapping[str, str], gateway: GatewaySettings
) -> tuple[ServiceConfig, ...]:
    """The services a checked AIP_CONFIG file declares; secrets come from ``variables``."""
    defaults = gateway.service_limits()
    configs = []
    for name, entry in parsed.services.items():
        configs.append(
            ServiceConfig(
                name=name,
                provider=entry.provider,
                description=entry.description,
                base_url=entry.base_url,
                api_key=variables.get(entry.api_key_env) or None if entry.api_key_env else None,
                api_key_env=entry.api_key_env,
                default_bot_id=entry.default_bot_id,
                default_workflow_id=entry.default_workflow_id,
                default_model=entry.default_model,
                options=entry.options,
                inputs=tuple(
                    ParameterSpec(name, spec.type, spec.description, spec.required)
                    for name, spec in entry.inputs.items()
                ),
                limits=entry.limits(defaults),
            )
        )
    return tuple(configs)


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` listens on this host only (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or 0.0.0.0 / [::]: reachable from elsewhere


def _variables(env_file: Path | None) -> dict[str, str]:
    """The environment over the .env file: where the file's api_key_env names are looked up."""
    from_file = {key: value for key, value in dotenv_values(env_file).items() if value is not None} if env_file else {}
    return {**from_file, **os.environ}


def describe_settings_error(error: pydantic.ValidationError) -> str:
    """One line naming each bad variable, e.g. ``AIP_ADDRESS: must be host:port ...``."""
    prefixes = {GatewaySettings.__name__: "AIP_", CozeSettings.__name__: "COZE_", OpenAISettings.__name__: "OPENAI_"}
    prefix = prefixes.get(error.title, "")
    problems = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper()
        if not name.startswith("OTEL_"):  # an OTEL_* variable is reported by its own name
            name = prefix + name
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(problems)
