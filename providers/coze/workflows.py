"""The Coze workflow service: run (the whole output), stream_run and stream_resume (events as they happen)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import httpx

from providers.base import (
    ParameterSpec,
    WorkflowInput,
    WorkflowInterrupt,
    WorkflowNodeEvent,
    WorkflowResult,
    WorkflowResume,
    WorkflowService,
)
from providers.coze import events
from providers.coze.clients import CozeClients, CozeService, drain
from providers.coze.errors import LOG_ID_HEADER, coze_error, error_answer, is_rate_limit, json_object, map_coze_errors
from providers.coze.events import WorkflowRun, event_json
from providers.errors import InvalidRequest
from providers.http import body_chunks
from providers.sse import ServerSentEvent, iter_sse


class CozeWorkflowService(CozeService, WorkflowService):
    """Coze workflows: run (whole output) and stream_run (events as they happen)."""

    provider: ClassVar[str] = "coze_workflow"
    request_fields: ClassVar[tuple[ParameterSpec, ...]] = (
        ParameterSpec("workflow_id", "string", "the workflow to run (default COZE_DEFAULT_WORKFLOW_ID)"),
        ParameterSpec("bot_id", "string", "the bot the workflow runs on behalf of, for workflows that need one"),
        ParameterSpec("app_id", "string", "the app the workflow belongs to, for app workflows"),
        ParameterSpec("workflow_version", "string", "the published version to run; empty: the latest"),
        ParameterSpec("connector_id", "string", "the channel the run is counted under (1024: API)"),
        ParameterSpec(
            "ext", "object of strings", "extra fields for the workflow's plugins (latitude, longitude, user_id)"
        ),
    )

    def __init__(
        self,
        name: str,
        clients: CozeClients | None,
        *,
        default_workflow_id: str = "",
        description: str = "",
        missing_key_reason: str = "COZE_API_TOKEN is not set",
        inputs: tuple[ParameterSpec, ...] = (),
    ) -> None:
        WorkflowService.__init__(
            self,
            name,
            description
            or "Coze workflows. parameters are the workflow's inputs; workflow_id defaults to "
            + (default_workflow_id or "COZE_DEFAULT_WORKFLOW_ID")
            + "; bot_id / app_id for workflows that need them.",
            inputs,
        )
        CozeService.__init__(self, clients, missing_key_reason)
        self._default_workflow_id = default_workflow_id

    async def run_workflow(self, request: WorkflowInput) -> WorkflowResult:
        clients = self._require_clients()
        body = _workflow_body(self._workflow_id(request), request)
        # Sent and read here, not through cozepy's workflows.runs.create: its WorkflowRunResult
        # has no field for the interrupt_data of a workflow that stopped at a question node.
        sent = await clients.request("/v1/workflow/run", body)
        with map_coze_errors():
            # Not streamed: the client reads the whole body and closes the response.
            response = await clients.http.send(sent)
        payload = _workflow_run_payload(response)
        log_id = response.headers.get(LOG_ID_HEADER, "")
        return WorkflowResult(
            output=events.text(payload.get("data")),
            execute_id=events.text(payload.get("execute_id")),
            debug_url=events.text(payload.get("debug_url")),
            usage=events.usage_of(payload.get("usage"), log_id),
            interrupt=interrupt(payload.get("interrupt_data"), log_id),
        )

    async def stream_workflow(self, request: WorkflowInput) -> AsyncGenerator[WorkflowNodeEvent, None]:
        clients = self._require_clients()
        body = _workflow_body(self._workflow_id(request), request)
        async with contextlib.aclosing(_workflow_events(clients, "/v1/workflow/stream_run", body)) as node_events:
            async for event in node_events:
                yield event

    async def resume_workflow(self, request: WorkflowResume) -> AsyncGenerator[WorkflowNodeEvent, None]:
        clients = self._require_clients()
        # event_id and resume_data were checked on the way in (server/convert.py).
        # Exactly the four keys Coze documents (and cozepy sends) for stream_resume.
        body: dict[str, Any] = {
            "workflow_id": self._workflow_id(request),
            "event_id": request.event_id,
            "resume_data": request.resume_data,
            "interrupt_type": request.interrupt_type,
        }
        async with contextlib.aclosing(_workflow_events(clients, "/v1/workflow/stream_resume", body)) as node_events:
            async for event in node_events:
                yield event

    def _workflow_id(self, request: WorkflowInput | WorkflowResume) -> str:
        workflow_id = request.workflow_id or self._default_workflow_id
        if not workflow_id:
            raise InvalidRequest("workflow_id", "is required (no COZE_DEFAULT_WORKFLOW_ID is configured)")
        return workflow_id


def _workflow_body(workflow_id: str, request: WorkflowInput) -> dict[str, Any]:
    """The body of /v1/workflow/run and /v1/workflow/stream_run (each option only when set)."""
    body: dict[str, Any] = {"workflow_id": workflow_id, "parameters": dict(request.parameters)}
    for option in ("bot_id", "app_id", "workflow_version", "connector_id"):
        value = getattr(request, option)
        if value:
            body[option] = value
    if request.ext:
        body["ext"] = dict(request.ext)
    return body


class WorkflowStream(WorkflowRun):
    """``events.WorkflowRun`` and what a stream tells beyond node output: the run's trace link, what an input needs.

    - An Interrupt's ``required_parameters`` (input nodes) go with the interrupt, and so does its
      ``debug_url`` when Coze sends one with it (coze-studio does).
    - Done's ``debug_url`` becomes a last event of its own, with only ``debug_url`` set, after
      the End node's event (workflow_stream_run: "Done ... debug_url"; the data may also be ``{}``).
    - An Error's ``debug_url`` (coze-studio sends one) goes into the error's message, where the
      caller and the log find the failed run's trace.

    No stream event documents the run's execute_id, so a streamed event carries none.
    """

    __slots__ = ()

    def read(self, sse: ServerSentEvent) -> WorkflowNodeEvent | None:
        kind = sse.event
        if kind == "Interrupt":
            event = super().read(sse)
            data = event_json(sse, self.log_id)
            if event is None or event.interrupt is None:  # pragma: no cover - WorkflowRun raises instead
                return event
            return dataclasses.replace(
                event,
                interrupt=_with_required_parameters(event.interrupt, data.get("interrupt_data")),
                debug_url=events.text(data.get("debug_url")),
            )
        if kind == "Error":
            data = event_json(sse, self.log_id)
            message = f"Coze workflow failed: {data.get('error_message', '')}"
            debug_url = events.text(data.get("debug_url"))
            if debug_url:
                message += f" (trace: {debug_url})"
            raise coze_error(data.get("error_code"), message, log_id=self.log_id)
        if kind == "Done":
            super().read(sse)
            debug_url = _done_debug_url(sse.data)
            return WorkflowNodeEvent(debug_url=debug_url) if debug_url else None
        return super().read(sse)


def interrupt(interrupt_data: object, log_id: str) -> WorkflowInterrupt | None:
    """``events.interrupt`` with the interrupt's ``required_parameters`` (any JSON value), when Coze sends them."""
    found = events.interrupt(interrupt_data, log_id)
    return None if found is None else _with_required_parameters(found, interrupt_data)


def _with_required_parameters(found: WorkflowInterrupt, interrupt_data: object) -> WorkflowInterrupt:
    required = interrupt_data.get("required_parameters") if isinstance(interrupt_data, dict) else None
    return found if required is None else dataclasses.replace(found, required_parameters=required)


def _done_debug_url(data: str) -> str:
    """The debug_url of a Done event's data; "" when it has none (``{}``, or data that is not an object)."""
    try:
        done = json.loads(data)
    except ValueError:
        return ""
    return events.text(done.get("debug_url")) if isinstance(done, dict) else ""


async def _workflow_events(
    clients: CozeClients, path: str, body: dict[str, Any]
) -> AsyncGenerator[WorkflowNodeEvent, None]:
    """POST a workflow stream request (stream_run or stream_resume) and yield its events until the run ends.

    ``WorkflowStream`` decides what each event means and when the run has ended; a
    body that ends before that raises ``run.cut()``.
    """
    run = WorkflowStream()
    sent = await clients.request(path, body)
    with map_coze_errors(run):
        response = await clients.send_stream(sent)
        async with contextlib.aclosing(response):
            run.log_id = response.headers.get(LOG_ID_HEADER, "")
            async with contextlib.aclosing(iter_sse(body_chunks(response))) as sse_events:
                async for sse in sse_events:
                    event = run.read(sse)
                    if event is not None:
                        yield event
                    if run.ended:
                        if run.interrupted:
                            # The interrupt is the run's last word until it is resumed; a Done may follow.
                            await drain(sse_events)
                        return
    raise run.cut()


def _workflow_run_payload(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a /v1/workflow/run answer; raises the typed error for an error answer."""
    payload = json_object(response.content)
    if payload is None or payload.get("code"):
        # The answer of a unary run comes after the run: only a refusal for its rate proves nothing ran.
        raise error_answer(response, payload, instead_of="a workflow result", unprocessed=is_rate_limit)
    return payload
