from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_SOURCE_UNSPECIFIED: _ClassVar[UsageSource]
    USAGE_SOURCE_REPORTED: _ClassVar[UsageSource]
    USAGE_SOURCE_ESTIMATED: _ClassVar[UsageSource]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
USAGE_SOURCE_UNSPECIFIED: UsageSource
USAGE_SOURCE_REPORTED: UsageSource
USAGE_SOURCE_ESTIMATED: UsageSource
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason

class ListServicesRequest(_message.Message):
    __slots__ = ("service_type",)
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    service_type: str
    def __init__(self, service_type: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("name", "type", "provider", "description", "ready", "streaming", "not_ready_reason", "parameters", "request_fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    NOT_READY_REASON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    provider: str
    description: str
    ready: bool
    streaming: bool
    not_ready_reason: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    request_fields: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., provider: _Optional[str] = ..., description: _Optional[str] = ..., ready: _Optional[bool] = ..., streaming: _Optional[bool] = ..., not_ready_reason: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., request_fields: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ...) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "description", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    description: str
    required: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., description: _Optional[str] = ..., required: _Optional[bool] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id", "parts")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    parts: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("text", "image", "file")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: ImagePart
    file: FilePart
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[ImagePart, _Mapping]] = ..., file: _Optional[_Union[FilePart, _Mapping]] = ...) -> None: ...

class ImagePart(_message.Message):
    __slots__ = ("url", "data", "mime_type", "file_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    data: bytes
    mime_type: str
    file_id: str
    def __init__(self, url: _Optional[str] = ..., data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., file_id: _Optional[str] = ...) -> None: ...

class FilePart(_message.Message):
    __slots__ = ("url", "file_id", "data", "name", "mime_type")
    URL_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    url: str
    file_id: str
    data: bytes
    name: str
    mime_type: str
    def __init__(self, url: _Optional[str] = ..., file_id: _Optional[str] = ..., data: _Optional[bytes] = ..., name: _Optional[str] = ..., mime_type: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("service_name", "messages", "parameters", "user_id", "conversation_id", "tools", "tool_choice", "chat_id")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    parameters: _struct_pb2.Struct
    user_id: str
    conversation_id: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: str
    chat_id: str
    def __init__(self, service_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[str] = ..., chat_id: _Optional[str] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("content", "reasoning", "conversation_id", "usage", "finish_reason", "chat_id", "tool_calls", "follow_ups", "awaiting_reply")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_UPS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_REPLY_FIELD_NUMBER: _ClassVar[int]
    content: str
    reasoning: str
    conversation_id: str
    usage: Usage
    finish_reason: FinishReason
    chat_id: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    follow_ups: _containers.RepeatedScalarFieldContainer[str]
    awaiting_reply: bool
    def __init__(self, content: _Optional[str] = ..., reasoning: _Optional[str] = ..., conversation_id: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., chat_id: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., follow_ups: _Optional[_Iterable[str]] = ..., awaiting_reply: _Optional[bool] = ...) -> None: ...

class StreamChatRequest(_message.Message):
    __slots__ = ("service_name", "messages", "parameters", "user_id", "conversation_id", "tools", "tool_choice", "chat_id")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    parameters: _struct_pb2.Struct
    user_id: str
    conversation_id: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: str
    chat_id: str
    def __init__(self, service_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., user_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[str] = ..., chat_id: _Optional[str] = ...) -> None: ...

class StreamChatResponse(_message.Message):
    __slots__ = ("delta", "reasoning_delta", "usage", "conversation_id", "finish_reason", "chat_id", "tool_calls", "follow_ups", "awaiting_reply")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_UPS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_REPLY_FIELD_NUMBER: _ClassVar[int]
    delta: str
    reasoning_delta: str
    usage: Usage
    conversation_id: str
    finish_reason: FinishReason
    chat_id: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    follow_ups: _containers.RepeatedScalarFieldContainer[str]
    awaiting_reply: bool
    def __init__(self, delta: _Optional[str] = ..., reasoning_delta: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., conversation_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., chat_id: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., follow_ups: _Optional[_Iterable[str]] = ..., awaiting_reply: _Optional[bool] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "type", "function_name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    function_name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., function_name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "total_tokens", "source")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    source: UsageSource
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., source: _Optional[_Union[UsageSource, str]] = ...) -> None: ...

class RunWorkflowRequest(_message.Message):
    __slots__ = ("service_name", "workflow_id", "parameters", "bot_id", "app_id", "workflow_version", "connector_id", "ext")
    class ExtEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    EXT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    workflow_id: str
    parameters: _struct_pb2.Struct
    bot_id: str
    app_id: str
    workflow_version: str
    connector_id: str
    ext: _containers.ScalarMap[str, str]
    def __init__(self, service_name: _Optional[str] = ..., workflow_id: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., bot_id: _Optional[str] = ..., app_id: _Optional[str] = ..., workflow_version: _Optional[str] = ..., connector_id: _Optional[str] = ..., ext: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RunWorkflowResponse(_message.Message):
    __slots__ = ("output", "execute_id", "debug_url", "usage", "interrupt")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DEBUG_URL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    output: str
    execute_id: str
    debug_url: str
    usage: Usage
    interrupt: WorkflowInterrupt
    def __init__(self, output: _Optional[str] = ..., execute_id: _Optional[str] = ..., debug_url: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., interrupt: _Optional[_Union[WorkflowInterrupt, _Mapping]] = ...) -> None: ...

class StreamWorkflowRequest(_message.Message):
    __slots__ = ("service_name", "workflow_id", "parameters", "bot_id", "app_id", "workflow_version", "connector_id", "ext")
    class ExtEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    EXT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    workflow_id: str
    parameters: _struct_pb2.Struct
    bot_id: str
    app_id: str
    workflow_version: str
    connector_id: str
    ext: _containers.ScalarMap[str, str]
    def __init__(self, service_name: _Optional[str] = ..., workflow_id: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., bot_id: _Optional[str] = ..., app_id: _Optional[str] = ..., workflow_version: _Optional[str] = ..., connector_id: _Optional[str] = ..., ext: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StreamWorkflowResponse(_message.Message):
    __slots__ = ("content", "node_title", "node_seq_id", "node_is_finish", "interrupt", "usage", "node_id", "execute_id", "debug_url")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NODE_TITLE_FIELD_NUMBER: _ClassVar[int]
    NODE_SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IS_FINISH_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DEBUG_URL_FIELD_NUMBER: _ClassVar[int]
    content: str
    node_title: str
    node_seq_id: str
    node_is_finish: bool
    interrupt: WorkflowInterrupt
    usage: Usage
    node_id: str
    execute_id: str
    debug_url: str
    def __init__(self, content: _Optional[str] = ..., node_title: _Optional[str] = ..., node_seq_id: _Optional[str] = ..., node_is_finish: _Optional[bool] = ..., interrupt: _Optional[_Union[WorkflowInterrupt, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., node_id: _Optional[str] = ..., execute_id: _Optional[str] = ..., debug_url: _Optional[str] = ...) -> None: ...

class ResumeWorkflowRequest(_message.Message):
    __slots__ = ("service_name", "workflow_id", "event_id", "resume_data", "interrupt_type")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_DATA_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_TYPE_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    workflow_id: str
    event_id: str
    resume_data: str
    interrupt_type: int
    def __init__(self, service_name: _Optional[str] = ..., workflow_id: _Optional[str] = ..., event_id: _Optional[str] = ..., resume_data: _Optional[str] = ..., interrupt_type: _Optional[int] = ...) -> None: ...

class ResumeWorkflowResponse(_message.Message):
    __slots__ = ("content", "node_title", "node_seq_id", "node_is_finish", "interrupt", "usage", "node_id", "execute_id", "debug_url")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NODE_TITLE_FIELD_NUMBER: _ClassVar[int]
    NODE_SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IS_FINISH_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DEBUG_URL_FIELD_NUMBER: _ClassVar[int]
    content: str
    node_title: str
    node_seq_id: str
    node_is_finish: bool
    interrupt: WorkflowInterrupt
    usage: Usage
    node_id: str
    execute_id: str
    debug_url: str
    def __init__(self, content: _Optional[str] = ..., node_title: _Optional[str] = ..., node_seq_id: _Optional[str] = ..., node_is_finish: _Optional[bool] = ..., interrupt: _Optional[_Union[WorkflowInterrupt, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., node_id: _Optional[str] = ..., execute_id: _Optional[str] = ..., debug_url: _Optional[str] = ...) -> None: ...

class WorkflowInterrupt(_message.Message):
    __slots__ = ("event_id", "type", "data", "required_parameters")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: int
    data: str
    required_parameters: _struct_pb2.Value
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[int] = ..., data: _Optional[str] = ..., required_parameters: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
