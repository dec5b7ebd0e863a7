"""``trading-backend broker setup-angel-one``: the seed's ``setup_broker_config.py`` step.

Reads the Angel One credentials from the environment / ``.env`` (ANGEL_ONE_API_KEY,
ANGEL_ONE_CLIENT_ID, ANGEL_ONE_PASSWORD — the 4-digit PIN —, ANGEL_ONE_TOTP_SECRET) and
creates, or updates in place, an ``angel_one`` broker config for a user (``--user``, else
the first user), credentials encrypted by the vault. Why update in place: the config id
is what orders and trades point at, so rotating a PIN or TOTP secret must not create a
second account. Secrets are never printed; only the config id and which keys were set.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy import select

from trading_backend.domain import DomainError, ErrorCode

ENV_NAMES = {
    "api_key": "ANGEL_ONE_API_KEY",
    "client_code": "ANGEL_ONE_CLIENT_ID",
    "pin": "ANGEL_ONE_PASSWORD",
    "totp_secret": "ANGEL_ONE_TOTP_SECRET",
}


def credentials_from_settings(settings: Any) -> dict[str, str]:
    """The four credentials from the settings; a missing one is a VALIDATION_ERROR that
    names the environment variable (never its value)."""
    values = {
        "api_key": settings.angel_one_api_key,
        "client_code": settings.angel_one_client_id,
        "pin": settings.angel_one_password,
        "totp_secret": settings.angel_one_totp_secret,
    }
    missing = [ENV_NAMES[k] for k, v in values.items() if not v or not str(v).strip()]
    if missing:
        raise DomainError(
            "set " + ", ".join(missing) + " (environment or .env) first",
            ErrorCode.VALIDATION_ERROR,
        )
    creds = {k: str(v).strip() for k, v in values.items()}
    secret = creds["totp_secret"].replace(" ", "").upper()
    import base64
    import binascii

    try:
        base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        raise DomainError(
            "ANGEL_ONE_TOTP_SECRET is not a base32 string", ErrorCode.VALIDATION_ERROR
        ) from None
    creds["totp_secret"] = secret
    return creds


async def upsert_angel_config(
    runtime: Any,
    creds: dict[str, str],
    *,
    user: str | None = None,
    name: str = "Angel One",
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create or update the user's ``angel_one`` config called ``name``."""
    from trading_backend.brokers.angel_one.broker import AngelOneBroker
    from trading_backend.storage.models import BrokerConfig
    from trading_backend.storage.repositories import add_audit

    if user:
        info = await runtime.accounts.resolve_user(user)
        if info is None:
            raise DomainError(f"user {user!r} not found", ErrorCode.USER_NOT_FOUND)
    else:
        users = [u for u in await runtime.accounts.list_users()]
        if not users:
            raise DomainError(
                "no users yet: create one with `trading-backend user create`",
                ErrorCode.USER_NOT_FOUND,
            )
        info = users[0]
    try:
        AngelOneBroker.validate_settings(dict(settings or {}))
    except DomainError as exc:
        raise DomainError(f"invalid settings: {exc.message}", ErrorCode.VALIDATION_ERROR) from None
    async with runtime.db() as session, session.begin():
        row = await session.scalar(
            select(BrokerConfig).where(
                BrokerConfig.user_id == info.id,
                BrokerConfig.broker == "angel_one",
                BrokerConfig.name == name,
                BrokerConfig.is_active.is_(True),
            )
        )
        if row is not None:
            row.credentials_encrypted = runtime.vault.encrypt(creds)
            if settings:
                row.settings = {**(row.settings or {}), **settings}
            await add_audit(
                session,
                "broker_config.updated",
                user_id=info.id,
                target=row.id,
                data={"broker": "angel_one", "name": name, "keys": sorted(creds)},
            )
            return {
                "config_id": row.id,
                "user": info.username,
                "created": False,
                "client_code": creds["client_code"],
            }
    created = await runtime.accounts.create_config(
        info.id, "angel_one", name, credentials=creds, settings=settings or {}
    )
    return {
        "config_id": created["config_id"],
        "user": info.username,
        "created": True,
        "client_code": creds["client_code"],
    }


def setup_angel_one(
    user: Annotated[
        str | None, typer.Option("--user", help="user id or username (default: the first user)")
    ] = None,
    name: Annotated[str, typer.Option(help="the config's name")] = "Angel One",
    root_url: Annotated[
        str | None, typer.Option("--root-url", help="SmartAPI root (default: the real one)")
    ] = None,
) -> None:
    """Create (or update) an Angel One broker config from ANGEL_ONE_* settings."""
    from trading_backend import cli

    settings = cli._settings()
    try:
        creds = credentials_from_settings(settings)
    except DomainError as exc:
        cli._fail(exc.message, exc.code.value)
        return
    extra = {"root_url": root_url} if root_url else None

    async def work(runtime: Any) -> dict[str, Any]:
        return await upsert_angel_config(runtime, creds, user=user, name=name, settings=extra)

    result = cli._with_runtime(work)
    verb = "created" if result["created"] else "updated"
    cli.console.print(
        f"{verb} angel_one config [bold]{result['config_id']}[/bold] for {result['user']}"
        f" (client {result['client_code']}; api_key, pin and totp_secret stored encrypted)"
    )


def register(broker_app: typer.Typer) -> None:
    broker_app.command("setup-angel-one")(setup_angel_one)
