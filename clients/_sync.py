"""The blocking client: one grpc channel, a method per RPC, errors as AIPlatformError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
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


class AIPlatformClient(ClientBase):
    """A blocking client for the AI Platform gateway; thread-safe, close it when done.

    Args:
        target: The gateway's address, "host:port".
        timeout: The deadline in seconds for each call that passes no ``timeout=``; None leaves it to the
            service config (600 s by default; no deadline with ``service_config=None``).
        metadata: ``(key, value)`` pairs sent with every call; a call's own ``metadata=`` replaces keys it repeats.
        options: grpc channel options, e.g. ``[("grpc.max_receive_message_length", 16 << 20)]``.
        credentials: TLS (or other) channel credentials; None for a plain-text channel.
        service_config: The gRPC service config, as a dict or JSON text. By default ``clients/service_config.json``
            (``default_service_config()``): round_robin over every address ``target`` resolves to, wait for a
            ready gateway, a 600 s deadline, and UNAVAILABLE or CANCELLED retried only before the first response
            message. None for grpc's defaults (pick_first, no retry policy, fail fast); a ``grpc.service_config``
            in ``options`` wins over this.
        api_key: The caller key, for a gateway with ``[keys.NAME]`` configured: sent with every call as
            ``authorization: Bearer <key>``, over plaintext and TLS alike (use TLS beyond one host). None (the
            default) takes ``$AIP_API_KEY``; "" sends no key, whatever the variable says. The key never shows in
            the client's repr, in the errors it raises or in its logs. An ``authorization`` entry in
            ``metadata``, or in a call's ``metadata=``, replaces it.

    Raises:
        ValueError: the key holds characters other than printable ASCII, which gRPC metadata cannot carry.
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
            grpc.insecure_channel(target, options=options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=options)
        )
        self._stub = pb_grpc.AIPlatformServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def list_services(
        self, service_type: str | None = None, *, timeout: Timeout = UNSET, metadata: Metadata | None = None
    ) -> list[pb.ServiceInfo]:
        """The gateway's services, sorted by name; ``service_type`` "chat" or "workflow" filters them."""
        request = pb.ListServicesRequest(service_type=service_type or "")
        options = self._call_options(timeout, metadata)
        with map_rpc_errors():
            response = self._stub.ListServices(request, **options)
        return list(response.services)

    def chat(
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
            response: pb.ChatResponse = self._stub.Chat(request, **options)
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
    ) -> Generator[pb.StreamChatResponse, None, None]:
        """Stream one chat turn; the call starts on the first ``next()``, and closing the iterator cancels it."""
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

    def stream_chat(
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
        """Stream one chat turn, calling ``callback(chunk, chunk.delta, text_so_far)`` per chunk; return the text."""
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
        return _collect(chunks, callback)

    def workflow(
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
            response: pb.RunWorkflowResponse = self._stub.RunWorkflow(request, **options)
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
    ) -> Generator[pb.StreamWorkflowResponse, None, None]:
        """Stream a workflow's events; the call starts on the first ``next()``, and closing the iterator cancels it."""
        request = workflow_request(pb.StreamWorkflowRequest, service_name, parameters, workflow_id, bot_id, app_id)
        return self._stream(self._stub.StreamWorkflow, request, timeout, metadata)

    def stream_workflow(
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
        return _collect(events, callback)

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
    ) -> Generator[pb.ResumeWorkflowResponse, None, None]:
        """Stream the rest of an interrupted workflow; the call starts on the first ``next()``, closing cancels it.

        ``event_id`` and ``interrupt_type`` are the interrupt's ``event_id`` and ``type``, unchanged;
        ``resume_data`` answers what it asked for. The run may stop at a further interrupt, resumed the same way.
        """
        request = resume_request(service_name, workflow_id, event_id, resume_data, interrupt_type)
        return self._stream(self._stub.ResumeWorkflow, request, timeout, metadata)

    def resume_workflow(
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

        Takes the arguments of ``iter_resume_workflow``.
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
        return _collect(events, callback)

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout: Timeout, metadata: Metadata | None
    ) -> Generator[Any, None, None]:
        call = method(request, **self._call_options(timeout, metadata))
        try:
            with map_rpc_errors():
                yield from call
        finally:
            # Ends the RPC on the gateway when the caller stops early; a no-op once it finished.
            call.cancel()


def _collect(chunks: Generator[StreamedT, None, None], callback: Callable[[StreamedT, str, str], object] | None) -> str:
    full_text = ""
    # closing: a callback that raises cancels the call at once instead of when the generator is collected.
    with contextlib.closing(chunks):
        for chunk in chunks:
            text = chunk_text(chunk)
            full_text += text
            if callback is not None:
                callback(chunk, text, full_text)
    return full_text
