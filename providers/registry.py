"""The service registry: finds a configured service, and the guard of its calls, by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from providers.base import AIService, ChatService, WorkflowService
from providers.errors import InvalidRequest, ServiceNotFound, ServiceNotReady, quote_input
from providers.guard import Backoff, CallGuard
from providers.limits import DEFAULT_LIMITS, ServiceLimits

_ServiceT = TypeVar("_ServiceT", bound=AIService)


class ServiceRegistry:
    """Services by name; the servicer asks it for a service of the right type."""

    def __init__(self, services: Iterable[AIService] = ()) -> None:
        self._services: dict[str, AIService] = {}
        self._guards: dict[str, CallGuard] = {}
        for service in services:
            self.register(service)

    def register(
        self, service: AIService, limits: ServiceLimits = DEFAULT_LIMITS, backoff: Backoff | None = None
    ) -> None:
        """Add a service and the limits its calls are guarded by; names are unique."""
        if service.name in self._services:
            raise ValueError(f"a service named {service.name!r} is already registered")
        self._services[service.name] = service
        self._guards[service.name] = CallGuard(service.name, limits, backoff)

    def guard(self, service: AIService) -> CallGuard:
        """The guard of ``service``'s calls."""
        return self._guards[service.name]

    def list(self, service_type: str = "") -> list[AIService]:
        """The services of ``service_type`` ("" for all), sorted by name."""
        return [
            service
            for name, service in sorted(self._services.items())
            if not service_type or service.service_type == service_type
        ]

    def chat_service(self, name: str) -> ChatService:
        """The ready chat service called ``name``."""
        service = self._find(name)
        if not isinstance(service, ChatService):
            raise _wrong_type(service)
        return _ready(service)

    def workflow_service(self, name: str) -> WorkflowService:
        """The ready workflow service called ``name``."""
        service = self._find(name)
        if not isinstance(service, WorkflowService):
            raise _wrong_type(service)
        return _ready(service)

    def limits_of(self, name: str) -> ServiceLimits:
        """The limits of the service called ``name`` (which must exist)."""
        return self._guards[name].limits

    def provider_of(self, name: str) -> str | None:
        """The provider of the service called ``name``, or None when there is none."""
        service = self._services.get(name)
        return None if service is None else service.provider

    def secrets(self) -> tuple[str, ...]:
        """Every credential the services hold, for ``server/errors.py`` to scrub from what callers and logs see."""
        return tuple({secret for service in self._services.values() for secret in service.secrets() if secret})

    async def aclose(self) -> None:
        """Close every service (their HTTP clients); called once at shutdown."""
        for service in self._services.values():
            await service.aclose()

    def _find(self, name: str) -> AIService:
        if not name:
            raise InvalidRequest("service_name", "is required (see ListServices for the names)")
        service = self._services.get(name)
        if service is None:
            known = ", ".join(sorted(self._services)) or "none"
            raise ServiceNotFound(f"service_name: no service named {quote_input(name)} (configured: {known})")
        return service


def _wrong_type(service: AIService) -> InvalidRequest:
    kind = service.service_type
    return InvalidRequest("service_name", f"{service.name!r} is a {kind} service; use the {kind} RPCs for it")


def _ready(service: _ServiceT) -> _ServiceT:
    reason = service.not_ready_reason()
    if reason:
        raise ServiceNotReady(f"service {service.name!r} is not ready: {reason}")
    return service
