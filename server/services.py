"""Builds the service registry from the settings: which services this gateway serves."""

from __future__ import annotations

from providers.coze import CozeChatService, CozeClients, CozeWorkflowService
from providers.echo import EchoChatService, EchoWorkflowService
from providers.registry import ServiceRegistry
from server.settings import Settings


def build_registry(settings: Settings) -> ServiceRegistry:
    """The built-in services: coze and coze_workflow (always listed), and the demo services."""
    registry = ServiceRegistry()
    coze = settings.coze
    # One pooled client for both Coze services; without a token they are listed as not ready.
    clients = (
        CozeClients(
            token=coze.api_token.get_secret_value(),
            base_url=coze.api_base,
            connect_timeout=settings.gateway.upstream_connect_timeout_seconds,
            read_timeout=settings.gateway.upstream_read_timeout_seconds,
        )
        if coze.api_token is not None
        else None
    )
    registry.register(CozeChatService("coze", clients, default_bot_id=coze.default_bot_id))
    registry.register(CozeWorkflowService("coze_workflow", clients, default_workflow_id=coze.default_workflow_id))
    if settings.gateway.demo_services:
        registry.register(EchoChatService("echo"))
        registry.register(EchoWorkflowService("echo_workflow"))
    return registry
