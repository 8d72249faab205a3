"""Python clients for the AI Platform gateway: ``AIPlatformClient`` (blocking) and ``AsyncAIPlatformClient`` (asyncio).

    from clients import AIPlatformClient

    with AIPlatformClient("localhost:50051") as client:
        answer = client.stream_chat("echo", [{"role": "user", "content": "你好"}], callback=print_chunk)

Every failed call raises ``AIPlatformError`` with the gRPC status code, message and the gateway's error details.

A gateway with caller keys wants one on every call: ``AIPlatformClient(target, api_key=key)``, or the key in
``$AIP_API_KEY`` (read when ``api_key`` is not given); the clients send it as ``authorization: Bearer <key>``.
"""

from __future__ import annotations

from clients._async import AsyncAIPlatformClient
from clients._common import (
    API_KEY_VARIABLE,
    AIPlatformError,
    ChatCallback,
    MessageLike,
    Metadata,
    ResumeWorkflowCallback,
    ToolLike,
    WorkflowCallback,
    default_service_config,
)
from clients._sync import AIPlatformClient

__all__ = [
    "API_KEY_VARIABLE",
    "AIPlatformClient",
    "AIPlatformError",
    "AsyncAIPlatformClient",
    "ChatCallback",
    "MessageLike",
    "Metadata",
    "ResumeWorkflowCallback",
    "ToolLike",
    "WorkflowCallback",
    "default_service_config",
]
