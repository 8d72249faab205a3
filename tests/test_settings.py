"""Settings: names users already know, defaults, .env handling, and secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from server.settings import CozeSettings, GatewaySettings, Settings, describe_settings_error

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_env_example_loads_as_the_defaults() -> None:
    from_example = Settings.from_environment(ROOT / ".env.example")
    defaults = Settings.from_environment(None)
    assert from_example == defaults
    assert from_example.coze.api_token is None
    assert from_example.gateway.address == "127.0.0.1:50051"
    assert from_example.coze.api_base == "https://api.coze.cn"


def test_the_environment_wins_over_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("COZE_DEFAULT_BOT_ID=from-file\nCOZE_DEFAULT_WORKFLOW_ID=wf-file\nAIP_GRACE_SECONDS=3\n")
    monkeypatch.setenv("COZE_DEFAULT_BOT_ID", "from-env")
    settings = Settings.from_environment(env_file)
    assert settings.coze.default_bot_id == "from-env"
    assert settings.coze.default_workflow_id == "wf-file"
    assert settings.gateway.grace_seconds == 3


def test_the_seed_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COZE_API_TOKEN", "pat_seed_token")
    monkeypatch.setenv("COZE_API_BASE", "https://api.coze.com/")
    monkeypatch.setenv("COZE_DEFAULT_BOT_ID", "7379462189365198898")
    monkeypatch.setenv("COZE_DEFAULT_WORKFLOW_ID", "7389589103588704256")
    monkeypatch.setenv("AIP_ADDRESS", "127.0.0.1:6000")
    settings = Settings.from_environment(None)
    assert settings.coze.api_token is not None
    assert settings.coze.api_token.get_secret_value() == "pat_seed_token"
    assert settings.coze.api_base == "https://api.coze.com"
    assert (settings.coze.default_bot_id, settings.coze.default_workflow_id) == (
        "7379462189365198898",
        "7389589103588704256",
    )
    assert settings.gateway.address == "127.0.0.1:6000"


def test_the_token_never_shows_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COZE_API_TOKEN", "pat_must_not_be_printed")
    settings = Settings.from_environment(None)
    assert "pat_must_not_be_printed" not in repr(settings)
    assert "pat_must_not_be_printed" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GatewaySettings(_env_file=None, address="50051"), "invalid setting AIP_ADDRESS: must be host:port"),
        (lambda: GatewaySettings(_env_file=None, address="h:99999"), "invalid setting AIP_ADDRESS: must be host:port"),
        (lambda: GatewaySettings(_env_file=None, grace_seconds=-1), "invalid setting AIP_GRACE_SECONDS:"),
        (lambda: CozeSettings(_env_file=None, api_base="ftp://x"), "invalid setting COZE_API_BASE: must be an http(s)"),
    ],
)
def test_bad_settings_are_described_by_variable_name(factory: object, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        factory()  # type: ignore[operator]
    assert describe_settings_error(raised.value).startswith(message)
