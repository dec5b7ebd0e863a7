"""Settings: generated secrets in development, a clear refusal in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from trading_backend.settings import ConfigurationError, Settings, ensure_secrets


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_development_generates_secrets_once_private(tmp_path: Path) -> None:
    first = ensure_secrets(settings(tmp_path))
    path = tmp_path / "secrets.env"
    assert path.stat().st_mode & 0o777 == 0o600
    second = ensure_secrets(settings(tmp_path))
    assert first.master_encryption_key == second.master_encryption_key
    assert first.jwt_secret_key == second.jwt_secret_key
    assert first.encryption_keys() == [first.master_encryption_key]


def test_production_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="MASTER_ENCRYPTION_KEY and JWT_SECRET_KEY"):
        ensure_secrets(settings(tmp_path, environment="production"))
    assert not (tmp_path / "secrets.env").exists()


def test_database_urls_get_async_drivers(tmp_path: Path) -> None:
    assert settings(tmp_path, database_url="postgresql://u@h/db").database_url == (
        "postgresql+asyncpg://u@h/db"
    )
    default = settings(tmp_path).effective_database_url
    assert default.startswith("sqlite+aiosqlite:///") and default.endswith("trading.db")


def test_key_lists_are_newest_first(tmp_path: Path) -> None:
    s = settings(tmp_path, master_encryption_key="new , old", jwt_secret_key="x")
    assert s.encryption_keys() == ["new", "old"]


def test_env_example_names_only_real_settings() -> None:
    """Every variable in env.example (set or commented out) is a setting, and the file loads."""
    import re

    example = Path(__file__).resolve().parents[1] / "env.example"
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example.read_text(), re.MULTILINE))
    known = {
        (field.validation_alias or name).upper() for name, field in Settings.model_fields.items()
    }
    assert names and names <= known, names - known
    loaded = Settings(_env_file=str(example))  # type: ignore[call-arg]
    assert loaded.access_token_minutes == 15 and loaded.rate_limit_orders == "20/second"
