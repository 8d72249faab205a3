"""The AIPlatformService servicer: finds the service, hands it plain values, relays its events.

Every call to a service goes through the service's CallGuard (timeouts, safe
retries, concurrency limit). Failures are raised, never caught here:
``server/interceptors.py`` turns every exception into a status through ``server/errors.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import AIService, ParameterSpec
from providers.registry import ServiceRegistry
from server import convert
from server.callers import current_caller

Context = grpc.aio.ServicerContext[object, object]


class AIPlatformServicer(pb_grpc.AIPlatformServiceServicer):
    """Implements the RPCs of AIPlatformService on top of a ServiceRegistry."""

    def __init__(self, registry: ServiceRegistry, limits: convert.RequestLimits | None = None) -> None:
        self._registry = registry
        self._limits = limits or convert.RequestLimits()

    async def ListServices(self, request: pb.ListServicesRequest, context: Context) -> pb.ListServicesResponse:
        # A caller with a key sees only the services its key may call (server/interceptors.py sets it).
        caller = current_caller.get()
        return pb.ListServicesResponse(
            services=[
                _service_info(service)
                for service in self._registry.list(request.service_type)
                if caller is None or caller.may_call(service.name)
            ]
        )

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        service = self._registry.chat_service(request.service_name)
        chat_input = convert.chat_input(request, self._limits)
        service.check_input(chat_input)
        result = await self._registry.guard(service).call(lambda: service.chat(chat_input), _deadline(context))
        return convert.chat_response(result)

    async def StreamChat(self, request: pb.StreamChatRequest, context: Context) -> AsyncIterator[pb.StreamChatResponse]:
        service = self._registry.chat_service(request.service_name)
        chat_input = convert.chat_input(request, self._limits)
        service.check_input(chat_input)
        to_message = convert.stream_chat_response
        events = self._registry.guard(service).stream(lambda: service.stream_chat(chat_input), _deadline(context))
        # aclosing: the provider's clean-up (closing the upstream) runs in this task,
        # at once, when the caller cancels or a write fails.
        async with contextlib.aclosing(events):
            async for event in events:
                yield to_message(event)

    async def RunWorkflow(self, request: pb.RunWorkflowRequest, context: Context) -> pb.RunWorkflowResponse:
        service = self._registry.workflow_service(request.service_name)
        workflow_input = convert.workflow_input(request, self._limits)
        guard = self._registry.guard(service)
        result = await guard.call(lambda: service.run_workflow(workflow_input), _deadline(context))
        return convert.run_workflow_response(result)

    async def StreamWorkflow(
        self, request: pb.StreamWorkflowRequest, context: Context
    ) -> AsyncIterator[pb.StreamWorkflowResponse]:
        service = self._registry.workflow_service(request.service_name)
        workflow_input = convert.workflow_input(request, self._limits)
        events = self._registry.guard(service).stream(
            lambda: service.stream_workflow(workflow_input), _deadline(context)
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield convert.stream_workflow_response(event)

    async def ResumeWorkflow(
        self, request: pb.ResumeWorkflowRequest, context: Context
    ) -> AsyncIterator[pb.ResumeWorkflowResponse]:
        service = self._registry.workflow_service(request.service_name)
        resume = convert.workflow_resume(request, self._limits)
        events = self._registry.guard(service).stream(lambda: service.resume_workflow(resume), _deadline(context))
        async with contextlib.aclosing(events):
            async for event in events:
                yield convert.resume_workflow_response(event)


def _deadline(context: Context) -> float | None:
    """The caller's deadline on time.monotonic(), or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


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
        parameters=[_parameter_info(spec) for spec in service.parameters],
        request_fields=[_parameter_info(spec) for spec in service.request_fields],
    )


def _parameter_info(spec: ParameterSpec) -> pb.ParameterInfo:
    return pb.ParameterInfo(name=spec.name, type=spec.type, description=spec.description, required=spec.required)
