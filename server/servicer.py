"""The AIPlatformService servicer: finds the service, hands it plain values, relays its events.

Failures are raised, never caught here: ``server/interceptors.py`` turns every
exception into a status through ``server/errors.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import AIService
from providers.registry import ServiceRegistry
from server import convert

Context = grpc.aio.ServicerContext[object, object]


class AIPlatformServicer(pb_grpc.AIPlatformServiceServicer):
    """Implements the five RPCs on top of a ServiceRegistry."""

    def __init__(self, registry: ServiceRegistry) -> None:
        self._registry = registry

    async def ListServices(self, request: pb.ListServicesRequest, context: Context) -> pb.ListServicesResponse:
        return pb.ListServicesResponse(
            services=[_service_info(service) for service in self._registry.list(request.service_type)]
        )

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        service = self._registry.chat_service(request.service_name)
        return convert.chat_response(await service.chat(convert.chat_input(request)))

    async def StreamChat(self, request: pb.StreamChatRequest, context: Context) -> AsyncIterator[pb.StreamChatResponse]:
        service = self._registry.chat_service(request.service_name)
        to_message = convert.stream_chat_response
        # aclosing: the provider's clean-up (closing the upstream) runs in this task,
        # at once, when the caller cancels or a write fails.
        async with contextlib.aclosing(service.stream_chat(convert.chat_input(request))) as events:
            async for event in events:
                yield to_message(event)

    async def RunWorkflow(self, request: pb.RunWorkflowRequest, context: Context) -> pb.RunWorkflowResponse:
        service = self._registry.workflow_service(request.service_name)
        return convert.run_workflow_response(await service.run_workflow(convert.workflow_input(request)))

    async def StreamWorkflow(
        self, request: pb.StreamWorkflowRequest, context: Context
    ) -> AsyncIterator[pb.StreamWorkflowResponse]:
        service = self._registry.workflow_service(request.service_name)
        async with contextlib.aclosing(service.stream_workflow(convert.workflow_input(request))) as events:
            async for event in events:
                yield convert.stream_workflow_response(event)


def _service_info(service: AIService) -> pb.ServiceInfo:
    reason = service.not_ready_reason()
    return pb.ServiceInfo(
        name=service.name,
        type=service.service_type,
        provider=service.provider,
        description=service.description,
        ready=not reason,
        streaming=service.streaming,
        not_ready_reason=reason,
    )
