"""No plaintext secret anywhere: a scenario stores broker credentials, logs in, enables
2FA, creates an API key, places orders and rotates the encryption keys; then every log
line, every API response and every database column is searched for the secrets."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pyotp
import pytest
import structlog
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.conftest import make_settings
from trading_backend.accounts.key_rotation import rotate_secrets
from trading_backend.api.app import create_app
from trading_backend.logging import configure_logging
from trading_backend.runtime import Runtime
from trading_backend.storage.models import Base

SECRETS = {
    "password": "correct-horse-PASSWORD-77",
    "api_key": "SMARTAPI-KEY-5e3a9c1d",
    "pin": "PIN-918273",
    "totp_secret": "JBSWY3DPEHPK3PXPSECRET",
    "client_code": "CLIENTCODE-A123",
}


async def test_no_secret_in_logs_responses_or_database(
    tmp_path: Path, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    old_key = Fernet.generate_key().decode()
    runtime = Runtime(make_settings(tmp_path, database_url, master_encryption_key=old_key))
    configure_logging("DEBUG")
    logging.getLogger().setLevel(logging.DEBUG)
    await runtime.start(worker=True, market=False, health_monitor=False)
    seen: list[str] = []
    try:
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def call(method: str, url: str, **kwargs: object) -> httpx.Response:
                response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
                seen.append(response.text)
                seen.append(str(response.headers))
                return response

            creds = {"username": "alice", "password": SECRETS["password"]}
            await call("POST", "/api/v1/auth/register", json=creds)
            bad = {"username": "alice", "password": SECRETS["password"] + "x"}
            await call("POST", "/api/v1/auth/login", json=bad)
            token = (await call("POST", "/api/v1/auth/login", json=creds)).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            credentials = {k: v for k, v in SECRETS.items() if k != "password"}
            config = await call(
                "POST",
                "/api/v1/brokers/configs",
                json={"broker": "paper", "name": "angel", "credentials": credentials},
                headers=auth,
            )
            config_id = config.json()["config_id"]
            # Two-factor secret, recovery codes and an API key: each shown once, to its
            # owner, in the response that creates it (kept out of ``seen``), never again.
            enrolment = await client.post("/api/v1/auth/2fa/enrol", headers=auth)
            totp = pyotp.TOTP(enrolment.json()["secret"])
            confirmed = await client.post(
                "/api/v1/auth/2fa/confirm", json={"code": totp.now()}, headers=auth
            )
            one_time = {
                "user_totp_secret": totp.secret,
                **{f"recovery_{n}": c for n, c in enumerate(confirmed.json()["recovery_codes"])},
            }
            key = await client.post(
                "/api/v1/auth/api-keys", json={"name": "bot", "scopes": ["admin"]}, headers=auth
            )
            one_time["api_key"] = key.json()["key"]
            await call("GET", "/api/v1/brokers/orders", headers={"X-API-Key": one_time["api_key"]})
            order = {"symbol": "TCS", "side": "BUY", "order_type": "MARKET", "quantity": 1}
            await call(
                "POST",
                "/api/v1/brokers/orders/place",
                json={"config_id": config_id, "order": order},
                headers=auth,
            )
            # A broker-side failure message must not echo credentials either.
            await call(
                "POST",
                "/api/v1/brokers/configs",
                json={
                    "broker": "paper",
                    "name": "bad",
                    "settings": {"initial_capital": "x"},
                    "credentials": credentials,
                },
                headers=auth,
            )
        await runtime.stop()
        # Restart with a new key first in the list, rotate, and read everything back.
        new_key = Fernet.generate_key().decode()
        runtime = Runtime(
            make_settings(tmp_path, database_url, master_encryption_key=f"{new_key},{old_key}")
        )
        await runtime.start(worker=True, market=False, health_monitor=False)
        report = await rotate_secrets(runtime.db, runtime.vault)
        assert report.rotated["broker_configs"] == 1
        transport = httpx.ASGITransport(app=create_app(runtime=runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # The rotated 2FA secret still works (the next step's code; this one was spent).
            login = {**creds, "totp_code": totp.at(time.time() + 30)}
            token = (await call("POST", "/api/v1/auth/login", json=login)).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            for url in (
                "/api/v1/auth/2fa",
                "/api/v1/auth/api-keys",
                "/api/v1/audit?limit=500",
                "/api/v1/admin/users",
                "/api/v1/brokers/configs",
                "/api/v1/brokers/sessions",
                f"/api/v1/brokers/positions?config_id={config_id}",
                f"/api/v1/brokers/balance?config_id={config_id}",
                "/api/v1/brokers/orders",
                "/api/v1/brokers/trades",
                "/api/v1/brokers/admin/status",
                "/api/v1/auth/me",
                "/health",
                "/openapi.json",
            ):
                response = await call("GET", url, headers=auth)
                assert response.status_code == 200, (url, response.text)
            by_key = await call(
                "GET", "/api/v1/admin/users", headers={"X-API-Key": one_time["api_key"]}
            )
            assert by_key.status_code == 200
        # every column of every table
        async with runtime.db() as session:
            for table in Base.metadata.sorted_tables:
                for row in (await session.execute(select(table))).all():
                    seen.append(" ".join(str(value) for value in row))
    finally:
        await runtime.stop()
        structlog.reset_defaults()
    output = capfd.readouterr()
    seen.extend([output.out, output.err])
    haystack = "\n".join(seen)
    assert "api_key" in haystack  # the scan did see the masked credential names
    for name, secret in {**SECRETS, **one_time}.items():
        assert secret not in haystack, f"{name} leaked"
