"""Provider factories by name: the built-in providers and those installed packages register.

A service is configured by a ``ServiceConfig`` (from the environment or the
``AIP_CONFIG`` file) that names its provider; the factory registered under that
name builds the service. A package adds a provider by declaring an entry point
in the group ``aiplatform.providers`` whose object is a factory::

    [project.entry-points."aiplatform.providers"]
    reverse = "my_package:create_service"    # def create_service(config: ServiceConfig) -> AIService
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.base import AIService, ParameterSpec
from providers.limits import DEFAULT_LIMITS, ServiceLimits

_LOGGER = logging.getLogger(__name__)

#: The entry-point group plugins register their provider factories in.
ENTRY_POINT_GROUP = "aiplatform.providers"

#: Where a service goes when its configuration names no base URL.
DEFAULT_COZE_BASE_URL = "https://api.coze.cn"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ServiceConfig:
    """One service as its provider receives it; the secret is already read from its variable."""

    name: str
    provider: str
    description: str = ""
    base_url: str = ""
    #: The secret, read from the environment variable ``api_key_env`` names; None when unset.
    api_key: str | None = field(default=None, repr=False)
    #: The name of the variable that holds the secret, for messages ("DEEPSEEK_API_KEY is not set").
    api_key_env: str = ""
    default_bot_id: str = ""
    default_workflow_id: str = ""
    default_model: str = ""
    #: Timeouts, retries and the concurrency cap: the guard applies them to every call; a provider
    #: gives its HTTP client ``connect_timeout_seconds``, and ``idle_timeout_seconds`` as read timeout.
    limits: ServiceLimits = DEFAULT_LIMITS
    #: Provider-specific settings from the config file's ``options`` table (for plugins).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A workflow service's input parameters, when the configuration declares them.
    inputs: tuple[ParameterSpec, ...] = ()

    def missing_key_reason(self) -> str:
        """Why the service is not ready when it has no key; names the variable to set."""
        return f"{self.api_key_env or 'the API key'} is not set"


ProviderFactory = Callable[[ServiceConfig], AIService]


class UnknownProvider(LookupError):
    """A service names a provider that is neither built in nor installed."""


def _builtin_factories() -> dict[str, ProviderFactory]:
    # Imported here so that a plugin importing ServiceConfig does not pull in every provider.
    from providers.coze import CozeChatflowService, CozeChatService, CozeClients, CozeWorkflowService
    from providers.echo import EchoChatService, EchoWorkflowService
    from providers.openai import OpenAIChatService

    # Coze services of the same account share one pooled client.
    coze_clients: dict[tuple[str, str, float, float], CozeClients] = {}

    def clients_for(config: ServiceConfig) -> CozeClients | None:
        if config.api_key is None:
            return None
        limits = config.limits
        key = (config.api_key, config.base_url, limits.connect_timeout_seconds, limits.idle_timeout_seconds)
        if key not in coze_clients:
            coze_clients[key] = CozeClients(
                token=config.api_key,
                base_url=config.base_url or DEFAULT_COZE_BASE_URL,
                connect_timeout_seconds=limits.connect_timeout_seconds,
                read_timeout_seconds=limits.idle_timeout_seconds,
            )
        return coze_clients[key]

    def coze(config: ServiceConfig) -> AIService:
        return CozeChatService(
            config.name,
            clients_for(config),
            default_bot_id=config.default_bot_id,
            description=config.description,
            missing_key_reason=config.missing_key_reason(),
        )

    def coze_chatflow(config: ServiceConfig) -> AIService:
        return CozeChatflowService(
            config.name,
            clients_for(config),
            default_workflow_id=config.default_workflow_id,
            description=config.description,
            missing_key_reason=config.missing_key_reason(),
        )

    def coze_workflow(config: ServiceConfig) -> AIService:
        return CozeWorkflowService(
            config.name,
            clients_for(config),
            default_workflow_id=config.default_workflow_id,
            description=config.description,
            missing_key_reason=config.missing_key_reason(),
            inputs=config.inputs,
        )

    def openai(config: ServiceConfig) -> AIService:
        return OpenAIChatService(
            config.name,
            base_url=config.base_url or DEFAULT_OPENAI_BASE_URL,
            api_key=config.api_key,
            default_model=config.default_model,
            connect_timeout_seconds=config.limits.connect_timeout_seconds,
            read_timeout_seconds=config.limits.idle_timeout_seconds,
            description=config.description,
            missing_key_reason=config.missing_key_reason(),
        )

    return {
        "coze": coze,
        "coze_chatflow": coze_chatflow,
        "coze_workflow": coze_workflow,
        "openai": openai,
        "echo": lambda config: EchoChatService(config.name, config.description),
        "echo_workflow": lambda config: EchoWorkflowService(config.name, config.description),
    }


class ProviderCatalog:
    """Every provider this gateway can build services of."""

    def __init__(self, factories: Mapping[str, ProviderFactory]) -> None:
        self._factories = dict(factories)

    @classmethod
    def installed(cls) -> ProviderCatalog:
        """The built-in providers plus every plugin installed in this environment."""
        factories = _builtin_factories()
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in factories:
                _LOGGER.warning(
                    "plugin provider %r (%s) ignored: the name is taken", entry_point.name, entry_point.value
                )
                continue
            factories[entry_point.name] = entry_point.load()
        return cls(factories)

    @property
    def names(self) -> list[str]:
        """The provider names, sorted."""
        return sorted(self._factories)

    def factory(self, config: ServiceConfig) -> ProviderFactory:
        """The factory of the provider ``config`` names."""
        factory = self._factories.get(config.provider)
        if factory is None:
            raise UnknownProvider(
                f"service {config.name!r}: unknown provider {config.provider!r} (available: {', '.join(self.names)})"
            )
        return factory

    def build(self, config: ServiceConfig) -> AIService:
        """The service ``config`` describes."""
        service: object = self.factory(config)(config)
        if not isinstance(service, AIService):
            raise TypeError(f"provider {config.provider!r} returned {type(service).__name__}, not an AIService")
        return service
