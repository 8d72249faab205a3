"""The asyncio client: the blocking client's methods as coroutines and async iterators, on grpc.aio."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from clients._common import (
    UNSET,
    ChatCallback,
    ClientBase,
    MessageLike,
    Metadata,
    ResumeWorkflowCallback,
    ServiceConfigOption,
    StreamedT,
    Timeout,
    ToolLike,
    WorkflowCallback,
    channel_options,
    chat_request,
    chunk_text,
    map_rpc_errors,
    resume_request,
    workflow_request,
)


class AsyncAIPlatformClient(ClientBase):
    """An asyncio client for the AI Platform gateway; create it on the event loop that uses it.

    Takes the same arguments as ``AIPlatformClient``.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        service_config: ServiceConfigOption = UNSET,
        api_key: str | None = None,
    ) -> None:
        super().__init__(target, timeout=timeout, metadata=metadata, api_key=api_key)
        options = channel_options(options, service_config)
        self._channel = (
            grpc.aio.insecure_channel(target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=options)
        )
        self._stub = pb_grpc.AIPlatformServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def list_services(
        self, service_type: str | None = None, *, timeout: Timeout = UNSET, metadata: Metadata | None = None
    ) -> list[pb.ServiceInfo]:
        """The gateway's services, sorted by name; ``service_type`` "chat" or "workflow" filters them."""
        request = pb.ListServicesRequest(service_type=service_type or "")
        options = self._call_options(timeout, metadata)
        with map_rpc_errors():
            response = await self._stub.ListServices(request, **options)
        return list(response.services)

    async def chat(
        self,
        service_name: str,
        messages: Iterable[MessageLike],
        parameters: Mapping[str, Any] | None = None,
        *,
        user_id: str = "",
        conversation_id: str = "",
        tools: Iterable[ToolLike] | None = None,
        tool_choice: str = "",
        chat_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> pb.ChatResponse:
        """Run one chat turn and return the whole answer.

        ``tools`` offers the model functions, and ``tool_choice`` ("auto", "none", "required" or a tool's
        name) steers it. When it calls some, the answer ends with FINISH_REASON_TOOL_CALLS and ``tool_calls``:
        run them, then call again with the history, the assistant turn ``{"role": "assistant",
        "tool_calls": response.tool_calls}`` and a ``{"role": "tool", "tool_call_id": call.id, "content":
        output}`` per call (a Coze service also wants ``conversation_id`` and this turn's ``chat_id``).
        A message's ``parts`` (dicts such as ``{"text": ...}``, ``{"image": {"url": ...}}`` or
        ``{"image": {"data": png_bytes, "mime_type": "image/png"}}``) replace its ``content``.
        """
        request = chat_request(
            pb.ChatRequest,
            service_name,
            messages,
            parameters,
            user_id,
            conversation_id,
            tools,
            tool_choice,
            chat_id,
        )
        options = self._call_options(timeout, metadata)
        with map_rpc_errors():
            response: pb.ChatResponse = await self._stub.Chat(request, **options)
        return response

    def iter_chat(
        self,
        service_name: str,
        messages: Iterable[MessageLike],
        parameters: Mapping[str, Any] | None = None,
        *,
        user_id: str = "",
        conversation_id: str = "",
        tools: Iterable[ToolLike] | None = None,
        tool_choice: str = "",
        chat_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> AsyncGenerator[pb.StreamChatResponse, None]:
        """Stream one chat turn (``async for``); the call starts when iterated, and ``aclose()`` cancels it."""
        request = chat_request(
            pb.StreamChatRequest,
            service_name,
            messages,
            parameters,
            user_id,
            conversation_id,
            tools,
            tool_choice,
            chat_id,
        )
        return self._stream(self._stub.StreamChat, request, timeout, metadata)

    async def stream_chat(
        self,
        service_name: str,
        messages: Iterable[MessageLike],
        parameters: Mapping[str, Any] | None = None,
        *,
        user_id: str = "",
        conversation_id: str = "",
        tools: Iterable[ToolLike] | None = None,
        tool_choice: str = "",
        chat_id: str = "",
        callback: ChatCallback | None = None,
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> str:
        """Stream one chat turn, calling ``callback(chunk, chunk.delta, text_so_far)`` per chunk; return the text.

        The callback may be a plain function or return an awaitable, which is awaited before the next chunk.
        """
        chunks = self.iter_chat(
            service_name,
            messages,
            parameters,
            user_id=user_id,
            conversation_id=conversation_id,
            tools=tools,
            tool_choice=tool_choice,
            chat_id=chat_id,
            timeout=timeout,
            metadata=metadata,
        )
        return await _collect(chunks, callback)

    async def workflow(
        self,
        service_name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        workflow_id: str = "",
        bot_id: str = "",
        app_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> pb.RunWorkflowResponse:
        """Run a workflow and return its whole output, or the interrupt it stopped at (``response.interrupt``)."""
        request = workflow_request(pb.RunWorkflowRequest, service_name, parameters, workflow_id, bot_id, app_id)
        options = self._call_options(timeout, metadata)
        with map_rpc_errors():
            response: pb.RunWorkflowResponse = await self._stub.RunWorkflow(request, **options)
        return response

    def iter_workflow(
        self,
        service_name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        workflow_id: str = "",
        bot_id: str = "",
        app_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> AsyncGenerator[pb.StreamWorkflowResponse, None]:
        """Stream a workflow's events (``async for``); the call starts when iterated, and ``aclose()`` cancels it."""
        request = workflow_request(pb.StreamWorkflowRequest, service_name, parameters, workflow_id, bot_id, app_id)
        return self._stream(self._stub.StreamWorkflow, request, timeout, metadata)

    async def stream_workflow(
        self,
        service_name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        workflow_id: str = "",
        bot_id: str = "",
        app_id: str = "",
        callback: WorkflowCallback | None = None,
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> str:
        """Stream a workflow, calling ``callback(event, event.content, contents_so_far)``; return the contents."""
        events = self.iter_workflow(
            service_name,
            parameters,
            workflow_id=workflow_id,
            bot_id=bot_id,
            app_id=app_id,
            timeout=timeout,
            metadata=metadata,
        )
        return await _collect(events, callback)

    def iter_resume_workflow(
        self,
        service_name: str,
        *,
        event_id: str,
        resume_data: str,
        interrupt_type: int,
        workflow_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> AsyncGenerator[pb.ResumeWorkflowResponse, None]:
        """Stream the rest of an interrupted workflow (``async for``); starts when iterated, ``aclose()`` cancels it.

        ``event_id`` and ``interrupt_type`` are the interrupt's ``event_id`` and ``type``, unchanged;
        ``resume_data`` answers what it asked for. The run may stop at a further interrupt, resumed the same way.
        """
        request = resume_request(service_name, workflow_id, event_id, resume_data, interrupt_type)
        return self._stream(self._stub.ResumeWorkflow, request, timeout, metadata)

    async def resume_workflow(
        self,
        service_name: str,
        *,
        event_id: str,
        resume_data: str,
        interrupt_type: int,
        workflow_id: str = "",
        callback: ResumeWorkflowCallback | None = None,
        timeout: Timeout = UNSET,
        metadata: Metadata | None = None,
    ) -> str:
        """Resume a workflow, calling ``callback(event, event.content, contents_so_far)``; return the contents.

        Takes the arguments of ``iter_resume_workflow``; the callback may return an awaitable, as in ``stream_chat``.
        """
        events = self.iter_resume_workflow(
            service_name,
            event_id=event_id,
            resume_data=resume_data,
            interrupt_type=interrupt_type,
            workflow_id=workflow_id,
            timeout=timeout,
            metadata=metadata,
        )
        return await _collect(events, callback)

    async def _stream(
        self, method: Callable[..., Any], request: Any, timeout: Timeout, metadata: Metadata | None
    ) -> AsyncGenerator[Any, None]:
        call = method(request, **self._call_options(timeout, metadata))
        try:
            with map_rpc_errors():
                async for response in call:
                    yield response
        finally:
            # Ends the RPC on the gateway when the caller stops early; a no-op once it finished.
            call.cancel()


async def _collect(
    chunks: AsyncGenerator[StreamedT, None], callback: Callable[[StreamedT, str, str], object] | None
) -> str:
    full_text = ""
    # aclosing: a callback that raises cancels the call at once, not when the loop collects the generator.
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            text = chunk_text(chunk)
            full_text += text
            if callback is not None:
                result = callback(chunk, text, full_text)
                if inspect.isawaitable(result):
                    await result
    return full_text
