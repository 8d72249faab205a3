"""What a call used, in tokens: the upstream's numbers when it reported them, an estimate otherwise.

Every call ends with a usage that is billed to its caller's key (``server/limits.py``) and
logged: a stream the caller cancelled, one the upstream cut and one that failed have no
reported usage, yet the upstream did work for them. ``UsageMeter`` watches the responses a
call sends; at the end it knows the reported usage, or estimates one from the text the
call took in and gave out (``USAGE_SOURCE_ESTIMATED``).

The estimate is a tokenizer-free rule that errs high: four ASCII characters per token (OpenAI's
and Anthropic's rule of thumb for English) and one token per other character (a CJK character
is one to two tokens in current tokenizers, most often one).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb

#: Tokens a chat message costs beyond its text (role and separators), as OpenAI counts them.
_TOKENS_PER_MESSAGE = 4


class UsageSource(enum.IntEnum):
    """Where a call's usage comes from (the API's UsageSource)."""

    UNSPECIFIED = pb.USAGE_SOURCE_UNSPECIFIED
    REPORTED = pb.USAGE_SOURCE_REPORTED
    ESTIMATED = pb.USAGE_SOURCE_ESTIMATED


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` is likely to cost, erring high (see the module docstring)."""
    if not text:
        return 0
    return _tokens(*_characters(text))


def _characters(text: str) -> tuple[int, int]:
    """The ASCII characters in ``text``, and the others."""
    ascii_characters = len(text.encode("ascii", "ignore"))
    return ascii_characters, len(text) - ascii_characters


def _tokens(ascii_characters: int, other_characters: int) -> int:
    return -(-ascii_characters // 4) + other_characters


def _struct_text(value: struct_pb2.Value | struct_pb2.Struct) -> Iterable[str]:
    """The strings (keys and values) in a Struct, as far as a caller's input reaches the model."""
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            yield key
            yield from _struct_text(item)
        return
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        yield value.string_value
    elif kind == "number_value":
        yield repr(value.number_value)
    elif kind == "struct_value":
        yield from _struct_text(value.struct_value)
    elif kind == "list_value":
        for item in value.list_value.values:
            yield from _struct_text(item)


#: What an image costs as input, whatever its size: OpenAI's price of a 1024×1024 image at high detail.
_TOKENS_PER_IMAGE = 765
#: What a file given by URL or provider id costs, its size unknown to the gateway.
_TOKENS_PER_FILE_REFERENCE = 1024


def _message_tokens(message: Any) -> int:
    tokens = estimate_tokens(message.content) + _TOKENS_PER_MESSAGE
    for call in message.tool_calls:
        tokens += estimate_tokens(call.function_name) + estimate_tokens(call.arguments)
    for part in message.parts:
        kind = part.WhichOneof("kind")
        if kind == "text":
            tokens += estimate_tokens(part.text)
        elif kind == "image":
            tokens += _TOKENS_PER_IMAGE
        elif kind == "file":
            tokens += -(-len(part.file.data) // 4) if part.file.data else _TOKENS_PER_FILE_REFERENCE
    return tokens


def estimate_input_tokens(request: Any) -> int:
    """The input tokens of a chat or workflow request, estimated from its text, parts and tools."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        tools = sum(
            estimate_tokens(tool.name)
            + estimate_tokens(tool.description)
            + sum(estimate_tokens(text) for text in _struct_text(tool.parameters))
            for tool in request.tools
        )
        return sum(_message_tokens(message) for message in messages) + tools
    if isinstance(request, pb.ResumeWorkflowRequest):
        return estimate_tokens(request.resume_data)
    if request.HasField("parameters"):
        return sum(estimate_tokens(text) for text in _struct_text(request.parameters))
    return 0


def requested_output_tokens(request: Any) -> int | None:
    """The output limit the request sets (``parameters.max_tokens``), if it sets one."""
    parameters = getattr(request, "parameters", None)
    if parameters is None or "max_tokens" not in parameters.fields:
        return None
    value = parameters.fields["max_tokens"]
    if value.WhichOneof("kind") != "number_value" or not 0 < value.number_value < 2**31:
        return None  # the request's validation refuses it; reserve the default meanwhile
    return int(value.number_value)


# The response fields that carry output text, by method name.
_OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "Chat": ("content", "reasoning"),
    "StreamChat": ("delta", "reasoning_delta"),
    "RunWorkflow": ("output",),
    "StreamWorkflow": ("content",),
    "ResumeWorkflow": ("content",),
}
# The methods whose last response carries the call's usage, reported or estimated: the unary
# ones, and the chat stream's message with a finish reason. (A workflow stream's usage comes
# on whichever node event the upstream puts it; when it reports none, only the accounting
# estimates it.)
_UNARY = frozenset({"Chat", "RunWorkflow"})


class UsageMeter:
    """Counts one call's usage from the responses it sends; see the module docstring."""

    __slots__ = (
        "_chat_stream",
        "_fields",
        "_output_ascii",
        "_output_other",
        "_unary",
        "estimated_input",
        "reported_input",
        "reported_output",
        "source",
    )

    def __init__(self, method: str) -> None:
        name = method.rpartition("/")[2]
        self._fields = _OUTPUT_FIELDS.get(name, ())
        self._unary = name in _UNARY
        self._chat_stream = name == "StreamChat"
        self.estimated_input = 0
        # The output's characters so far, summed before rounding: a stream of one-character
        # deltas is estimated as its whole text is.
        self._output_ascii = 0
        self._output_other = 0
        self.reported_input = 0
        self.reported_output = 0
        self.source = UsageSource.UNSPECIFIED

    def begin(self, request: Any) -> None:
        """Estimate the input of the call's request (before the upstream is asked)."""
        if self._fields:
            self.estimated_input = estimate_input_tokens(request)

    def observe(self, response: Any) -> None:
        """Count a response on its way to the caller: its reported usage, or its text.

        A final response without usage gets the estimated one first (``complete``).
        """
        if self._unary or (self._chat_stream and response.finish_reason):
            self.complete(response)
        for name in self._fields:
            ascii_characters, other_characters = _characters(getattr(response, name))
            self._output_ascii += ascii_characters
            self._output_other += other_characters
        if self._fields and response.HasField("usage"):
            usage = response.usage
            if usage.source == pb.USAGE_SOURCE_REPORTED:
                self.reported_input += usage.input_tokens
                self.reported_output += usage.output_tokens
                self.source = UsageSource.REPORTED

    def complete(self, response: Any) -> None:
        """Give a call's final response the estimated usage when the upstream reported none."""
        if self.source is UsageSource.UNSPECIFIED and self._fields and not response.HasField("usage"):
            ascii_characters, other_characters = self._output_ascii, self._output_other
            for name in self._fields:
                ascii_in_text, other_in_text = _characters(getattr(response, name))
                ascii_characters += ascii_in_text
                other_characters += other_in_text
            output = _tokens(ascii_characters, other_characters)
            response.usage.CopyFrom(
                pb.Usage(
                    input_tokens=self.estimated_input,
                    output_tokens=output,
                    total_tokens=self.estimated_input + output,
                    source=pb.USAGE_SOURCE_ESTIMATED,
                )
            )

    @property
    def estimated_output(self) -> int:
        """The output tokens of the responses observed so far, estimated from their text."""
        return _tokens(self._output_ascii, self._output_other)

    def final(self, upstream_worked: bool) -> tuple[int, int, UsageSource]:
        """The call's input and output tokens and where they come from.

        ``upstream_worked`` says whether the upstream may have done (and billed) work: a call
        refused before it reached the upstream used nothing.
        """
        if self.source is UsageSource.REPORTED:
            return self.reported_input, self.reported_output, UsageSource.REPORTED
        if not upstream_worked or not self._fields:
            return 0, 0, UsageSource.UNSPECIFIED
        return self.estimated_input, self.estimated_output, UsageSource.ESTIMATED
