"""Many services at once: one StreamChat call across providers, and a TOML file of several services."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from aiplatform.v1 import aiplatform_pb2 as pb
from server.settings import CozeSettings, OpenAISettings
from tests.conftest import make_settings
from tests.fakes import coze as fake_coze_module
from tests.fakes import openai as fake_openai_module
from tests.fakes.coze import FakeCoze
from tests.fakes.openai import FakeOpenAI
from tests.gateway_process import gateway_env, running_gateway
from tests.harness import gateway_for

QUESTION = "What day is it?"


@pytest.mark.parametrize(
    ("service_name", "answer"),
    [
        ("echo", QUESTION),
        ("coze", fake_coze_module.DEFAULT_ANSWER),
        ("openai", fake_openai_module.DEFAULT_ANSWER),
    ],
)
async def test_the_same_stream_chat_call_works_against_every_chat_provider(
    fake_coze: FakeCoze, fake_openai: FakeOpenAI, service_name: str, answer: str
) -> None:
    """Only service_name changes: defaults (bot, model) come from the gateway's configuration."""
    settings = make_settings(fake_coze)
    settings.coze = CozeSettings(
        _env_file=None, api_token=fake_coze.token, api_base=fake_coze.base_url, default_bot_id="bot-default"
    )
    settings.openai = OpenAISettings(
        _env_file=None, api_key=fake_openai.api_key, base_url=fake_openai.base_url, default_model="gpt-fake"
    )
    async with gateway_for(settings) as gateway:
        request = pb.StreamChatRequest(
            service_name=service_name, messages=[pb.ChatMessage(role="user", content=QUESTION)], user_id="u-1"
        )
        responses = [response async for response in gateway.stub.StreamChat(request)]
    assert len(responses) > 2
    assert "".join(response.delta for response in responses) == answer
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert responses[-1].usage.total_tokens > 0


async def test_a_toml_file_of_three_services_of_two_providers(
    tmp_path: Path, fake_coze: FakeCoze, fake_openai: FakeOpenAI
) -> None:
    """As an operator runs it: `python -m server` with AIP_CONFIG and the keys in the environment."""
    async with FakeOpenAI(api_key="sk-second-fake-key-abcdefghij") as second_openai:
        config = tmp_path / "services.toml"
        config.write_text(
            f"""
            [services.deepseek]
            provider = "openai"
            description = "DeepSeek (fake)"
            base_url = "{fake_openai.base_url}"
            api_key_env = "DEEPSEEK_API_KEY"
            default_model = "deepseek-chat"

            [services.qwen]
            provider = "openai"
            description = "Qwen (fake)"
            base_url = "{second_openai.base_url}"
            api_key_env = "DASHSCOPE_API_KEY"
            default_model = "qwen-plus"

            [services.coze_support]
            provider = "coze"
            base_url = "{fake_coze.base_url}"
            api_key_env = "COZE_SUPPORT_TOKEN"
            default_bot_id = "bot-support"

            [services.unconfigured]
            provider = "openai"
            api_key_env = "NOT_SET_ANYWHERE"
            """,
            encoding="utf-8",
        )
        env = gateway_env(
            AIP_CONFIG=str(config),
            DEEPSEEK_API_KEY=fake_openai.api_key,
            DASHSCOPE_API_KEY=second_openai.api_key,
            COZE_SUPPORT_TOKEN=fake_coze.token,
        )
        env.pop("NOT_SET_ANYWHERE", None)
        async with running_gateway(env, tmp_path) as started:
            process = started.process
            stub = started.stub
            listed = {s.name: s for s in (await stub.ListServices(pb.ListServicesRequest())).services}
            assert {
                name: (s.provider, s.ready)
                for name, s in listed.items()
                if name in ("deepseek", "qwen", "coze_support", "unconfigured")
            } == {
                "deepseek": ("openai", True),
                "qwen": ("openai", True),
                "coze_support": ("coze", True),
                "unconfigured": ("openai", False),
            }
            assert "NOT_SET_ANYWHERE" in listed["unconfigured"].not_ready_reason
            for name in ("deepseek", "qwen", "qwen", "coze_support"):
                await stub.Chat(pb.ChatRequest(service_name=name, messages=[pb.ChatMessage(role="user", content="hi")]))
            await started.close_channel()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10) == 0
    # Each service reached only its own upstream, with its own key and default.
    assert [request.json["model"] for request in fake_openai.requests] == ["deepseek-chat"]
    assert [request.json["model"] for request in second_openai.requests] == ["qwen-plus", "qwen-plus"]
    assert all(
        request.headers["authorization"] == f"Bearer {second_openai.api_key}" for request in second_openai.requests
    )
    assert [request.json["bot_id"] for request in fake_coze.requests] == ["bot-support"]
