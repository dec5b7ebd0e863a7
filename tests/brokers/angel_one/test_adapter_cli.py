"""``trading-backend broker setup-angel-one``: creates, then updates in place, an
angel_one config from the ANGEL_ONE_* settings; secrets never printed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from tests.brokers.angel_one.support import API_KEY, CLIENT_CODE, PIN, TOTP_SECRET
from trading_backend.cli import app
from trading_backend.runtime import Runtime
from trading_backend.settings import Settings, get_settings


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "TRADING_BACKEND_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "MASTER_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "JWT_SECRET_KEY": "cli-test-secret-key-0123456789",
        "ENVIRONMENT": "test",
        "ANGEL_ONE_API_KEY": API_KEY,
        "ANGEL_ONE_CLIENT_ID": CLIENT_CODE,
        "ANGEL_ONE_PASSWORD": PIN,
        "ANGEL_ONE_TOTP_SECRET": TOTP_SECRET,
    }
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def configs(settings: Settings, username: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        rt = Runtime(settings)
        await rt.start(worker=False, market=False, health_monitor=False)
        try:
            user = await rt.accounts.resolve_user(username)
            assert user is not None
            rows = await rt.accounts.list_configs(user.id)
            session_configs = [await rt.sessions.load_config(user.id, r["config_id"]) for r in rows]
            return [
                {"row": r, "credentials": c.credentials, "settings": c.settings}
                for r, c in zip(rows, session_configs, strict=True)
            ]
        finally:
            await rt.stop()

    return asyncio.run(read())


def test_setup_creates_then_updates_the_config(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert (
        runner.invoke(app, ["user", "create", "asha", "--password", "long-enough-pw"]).exit_code
        == 0
    )
    first = runner.invoke(app, ["broker", "setup-angel-one", "--root-url", "http://127.0.0.1:9"])
    assert first.exit_code == 0, first.output
    assert "created angel_one config" in first.output and "for asha" in first.output
    for secret in (API_KEY, TOTP_SECRET):
        assert secret not in first.output
    settings = get_settings()
    [config] = configs(settings, "asha")
    assert config["credentials"] == {
        "api_key": API_KEY,
        "client_code": CLIENT_CODE,
        "pin": PIN,
        "totp_secret": TOTP_SECRET,
    }
    assert config["settings"] == {"root_url": "http://127.0.0.1:9"}

    # A rotated PIN: the same config is updated, not a second one created.
    get_settings.cache_clear()
    import os

    os.environ["ANGEL_ONE_PASSWORD"] = "5678"
    second = runner.invoke(app, ["broker", "setup-angel-one", "--user", "asha"])
    assert second.exit_code == 0, second.output
    assert "updated angel_one config" in second.output
    [updated] = configs(get_settings(), "asha")
    assert updated["row"]["config_id"] == config["row"]["config_id"]  # type: ignore[index]
    assert updated["credentials"]["pin"] == "5678"  # type: ignore[index]


def test_missing_credentials_and_unknown_user_are_clear_errors(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    none_yet = runner.invoke(app, ["broker", "setup-angel-one"])
    assert none_yet.exit_code == 1 and "USER_NOT_FOUND" in none_yet.output
    nobody = runner.invoke(app, ["broker", "setup-angel-one", "--user", "nobody"])
    assert nobody.exit_code == 1 and "USER_NOT_FOUND" in nobody.output
    monkeypatch.delenv("ANGEL_ONE_TOTP_SECRET")
    get_settings.cache_clear()
    missing = runner.invoke(app, ["broker", "setup-angel-one"])
    assert missing.exit_code == 1
    assert "ANGEL_ONE_TOTP_SECRET" in missing.output and "VALIDATION_ERROR" in missing.output
