"""Services declared in the AIP_CONFIG file, and provider plugins installed as packages."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.limits import DEFAULT_LIMITS, ServiceLimits
from server.services import build_registry
from server.settings import ConfigError, GatewaySettings, ServiceEntry, Settings, load_service_file
from tests.conftest import make_settings
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.gateway_process import failed_start, gateway_env
from tests.harness import gateway_for

HI = [pb.ChatMessage(role="user", content="hello")]


def _settings_with_file(tmp_path: Path, text: str, fake_coze: FakeCoze | None = None, **variables: str) -> Settings:
    path = tmp_path / "services.toml"
    path.write_text(text, encoding="utf-8")
    settings = make_settings(fake_coze)
    settings.file_services = load_service_file(path, variables, settings.gateway)
    return settings


async def test_a_second_coze_bot_with_its_own_default_and_token(tmp_path: Path, fake_coze: FakeCoze) -> None:
    settings = _settings_with_file(
        tmp_path,
        f"""
        [services.coze_support]
        provider = "coze"
        description = "Support bot"
        base_url = "{fake_coze.base_url}"
        api_key_env = "SUPPORT_COZE_TOKEN"
        default_bot_id = "bot-support"
        """,
        SUPPORT_COZE_TOKEN=fake_coze.token,
    )
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        listed = {service.name: service for service in (await stub.ListServices(pb.ListServicesRequest())).services}
        support = listed["coze_support"]
        assert (support.type, support.provider, support.ready, support.description) == (
            "chat",
            "coze",
            True,
            "Support bot",
        )
        assert "coze" in listed and "echo" in listed, "the environment's services stay"
        answer = await stub.Chat(pb.ChatRequest(service_name="coze_support", messages=HI))
    assert answer.content == fake.DEFAULT_ANSWER
    assert fake_coze.requests[-1].json["bot_id"] == "bot-support"


async def test_a_service_whose_key_variable_is_unset_is_listed_not_ready(tmp_path: Path) -> None:
    settings = _settings_with_file(
        tmp_path,
        """
        [services.deepseek]
        provider = "openai"
        base_url = "https://api.deepseek.com/v1"
        api_key_env = "DEEPSEEK_API_KEY"
        default_model = "deepseek-chat"
        """,
    )
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        listed = {service.name: service for service in (await stub.ListServices(pb.ListServicesRequest())).services}
        assert not listed["deepseek"].ready
        assert listed["deepseek"].not_ready_reason
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Chat(pb.ChatRequest(service_name="deepseek", messages=HI))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_plugin_provider_serves_calls_after_one_line_of_config(tmp_path: Path) -> None:
    settings = _settings_with_file(
        tmp_path,
        """
        [services.mirror]
        provider = "reverse"   # registered by the aiplatform-reverse-plugin package
        options = { upper = true }
        """,
    )
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        listed = {service.name: service for service in (await stub.ListServices(pb.ListServicesRequest())).services}
        assert (listed["mirror"].provider, listed["mirror"].ready) == ("reverse", True)
        chunks = [
            chunk.delta async for chunk in stub.StreamChat(pb.StreamChatRequest(service_name="mirror", messages=HI))
        ]
    assert "".join(chunks) == "OLLEH"


def test_a_file_service_replaces_a_built_in_one_of_the_same_name(tmp_path: Path) -> None:
    settings = _settings_with_file(tmp_path, '[services.echo]\nprovider = "reverse"\n')
    registry = build_registry(settings)
    (echo,) = [service for service in registry.list() if service.name == "echo"]
    assert echo.provider == "reverse"


def test_each_service_limit_is_an_aip_setting_and_a_config_file_key_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIP_IDLE_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("AIP_MAX_CONCURRENT_CALLS", "8")
    gateway = GatewaySettings(_env_file=None)
    path = tmp_path / "services.toml"
    path.write_text(
        '[services.own]\nprovider = "echo"\nfirst_token_timeout_seconds = 7\nmax_concurrent_calls = 2\n'
        '[services.plain]\nprovider = "echo"\n',
        encoding="utf-8",
    )
    settings = Settings(gateway=gateway, file_services=load_service_file(path, {}, gateway))
    limits = {config.name: config.limits for config in settings.service_configs()}

    from_environment = replace(DEFAULT_LIMITS, idle_timeout_seconds=30, max_concurrent_calls=8)
    assert limits["own"] == replace(from_environment, first_token_timeout_seconds=7, max_concurrent_calls=2)
    assert limits["plain"] == limits["echo"] == limits["coze"] == from_environment
    names = {limit.name for limit in fields(ServiceLimits)}
    assert names <= GatewaySettings.model_fields.keys() and names <= ServiceEntry.model_fields.keys()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[services.x]\nprovider = "nope"\n',
            "service 'x': unknown provider 'nope' (available: coze, coze_chatflow, coze_workflow, ",
        ),
        ('[services.x]\nprovider = "coze"\napi_key = "pat_secret"\n', "services.x: 'api_key' looks like a secret"),
        ('[services.x]\nprovider = "coze"\nbase_url = "api.coze.cn"\n', "services.x.base_url: must be an http(s) URL"),
        (
            '[services.x]\nprovider = "coze"\nidle_timeout_seconds = 0\n',
            "services.x.idle_timeout_seconds: Input should be greater than 0",
        ),
        ('[services.x]\nprovider = "coze"\ncolour = "blue"\n', "services.x.colour: Extra inputs are not permitted"),
        ('[services.x]\ndescription = "no provider"\n', "services.x.provider: Field required"),
        ('[services."bad name"]\nprovider = "echo"\n', "services.bad name: a service name is"),
        ("[services.x\n", "not valid TOML"),
    ],
)
def test_an_invalid_file_is_refused_naming_the_service_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_registry(_settings_with_file(tmp_path, text))
    assert message in str(raised.value)
    assert "pat_secret" not in str(raised.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_service_file(tmp_path / "absent.toml", {}, GatewaySettings(_env_file=None))


async def test_the_gateway_stops_with_one_line_for_an_invalid_file(tmp_path: Path) -> None:
    config = tmp_path / "services.toml"
    config.write_text('[services.x]\nprovider = "nope"\n')
    code, lines = await failed_start(gateway_env(AIP_CONFIG=str(config)), tmp_path)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("aiplatform: AIP_CONFIG: service 'x': unknown provider 'nope'")


async def test_list_services_describes_each_services_parameters(tmp_path: Path, fake_coze: FakeCoze) -> None:
    settings = _settings_with_file(
        tmp_path,
        f"""
        [services.weather]
        provider = "coze_workflow"
        base_url = "{fake_coze.base_url}"
        api_key_env = "COZE_TOKEN"
        default_workflow_id = "7389589103588704256"

        [services.weather.inputs]
        city = {{ type = "string", description = "城市名", required = true }}
        days = {{ type = "integer", description = "how many days" }}
        """,
        COZE_TOKEN=fake_coze.token,
    )
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        listed = {service.name: service for service in (await stub.ListServices(pb.ListServicesRequest())).services}
    described = {name: [(p.name, p.type, p.required) for p in service.parameters] for name, service in listed.items()}
    assert described["weather"] == [("city", "string", True), ("days", "integer", False)]
    assert described["echo"] == [("delay_ms", "integer", False)]
    assert described["coze"] == [
        ("bot_id", "string", True),
        ("custom_variables", "object", False),
        ("meta_data", "object", False),
        ("auto_save_history", "boolean", False),
        ("extra_params", "object", False),
        ("shortcut_command", "object", False),
        ("parameters", "object", False),
    ]
    assert ("model", "string", True) in described["openai"] and ("stop", "string|array", False) in described["openai"]
    assert all(p.description for p in listed["openai"].parameters)
