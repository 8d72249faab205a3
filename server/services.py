"""Builds the service registry from the settings: which services this gateway serves."""

from __future__ import annotations

from providers.catalog import ProviderCatalog, UnknownProvider
from providers.registry import ServiceRegistry
from server.settings import ConfigError, Settings


def build_registry(settings: Settings, catalog: ProviderCatalog | None = None) -> ServiceRegistry:
    """One service per configuration: the built-in ones, the demo ones, and the AIP_CONFIG file's.

    Raises:
        ConfigError: a service names a provider that is neither built in nor installed.
    """
    catalog = catalog or ProviderCatalog.installed()
    registry = ServiceRegistry()
    try:
        for config in settings.service_configs():
            registry.register(catalog.build(config), config.limits)
    except UnknownProvider as error:
        raise ConfigError(f"AIP_CONFIG: {error}") from error
    return registry


def check_providers(settings: Settings, catalog: ProviderCatalog | None = None) -> None:
    """Fail early, before anything starts, when a service names an unknown provider.

    Raises:
        ConfigError: as build_registry would.
    """
    catalog = catalog or ProviderCatalog.installed()
    try:
        for config in settings.service_configs():
            catalog.factory(config)
    except UnknownProvider as error:
        raise ConfigError(f"AIP_CONFIG: {error}") from error
