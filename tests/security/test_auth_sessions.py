"""Login sessions: refresh rotation and reuse detection, logout, password change, token
tampering, lock-out and back-off, registration mode, rate limits, security headers."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import make_settings
from tests.security.support import PASSWORD, ClientFactory, bearer, register
from trading_backend.api.app import create_app
from trading_backend.runtime import Runtime


async def test_refresh_rotates_and_reuse_revokes_the_family(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        first = await register(client, "alice")
        second = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert second.status_code == 200
        pair = second.json()
        assert pair["refresh_token"] != first["refresh_token"]
        assert (
            await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        ).status_code == 200
        # Replaying the used token: the thief and the owner both lose the login.
        replay = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert replay.status_code == 401 and replay.json()["error_code"] == "TOKEN_REVOKED"
        child = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert child.status_code == 401 and child.json()["error_code"] == "TOKEN_REVOKED"
        me = await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert me.status_code == 401 and me.json()["error_code"] == "TOKEN_REVOKED"
        bogus = await client.post("/api/v1/auth/refresh", json={"refresh_token": "tbr_nope"})
        assert bogus.status_code == 401 and bogus.json()["error_code"] == "NOT_AUTHENTICATED"


async def test_logout_ends_the_session(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        tokens = await register(client, "alice")
        other = (
            await client.post(
                "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
            )
        ).json()
        out = await client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
        assert out.status_code == 200
        gone = await client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
        assert gone.status_code == 401 and gone.json()["error_code"] == "TOKEN_REVOKED"
        refused = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refused.status_code == 401
        # Another login of the same user is untouched.
        assert (
            await client.get("/api/v1/auth/me", headers=bearer(other["access_token"]))
        ).status_code == 200


async def test_password_change_revokes_every_session(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        tokens = await register(client, "alice")
        other = (
            await client.post(
                "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
            )
        ).json()
        wrong = await client.post(
            "/api/v1/auth/password",
            json={"current_password": "nope-nope", "new_password": "brand-new-pass"},
            headers=bearer(tokens["access_token"]),
        )
        assert wrong.status_code == 401
        changed = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "brand-new-pass"},
            headers=bearer(tokens["access_token"]),
        )
        assert changed.status_code == 200
        for token in (tokens["access_token"], other["access_token"]):
            assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401
        assert (
            await client.post(
                "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
            )
        ).status_code == 401
        old = await client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        assert old.status_code == 401
        new = await client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": "brand-new-pass"}
        )
        assert new.status_code == 200


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_expired_and_unsigned_tokens_are_refused(make_client: ClientFactory) -> None:
    async with make_client() as (client, runtime):
        tokens = await register(client, "alice")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        secret = runtime.settings.jwt_secret_key
        now = datetime.now(UTC)
        forged = {
            "expired": jwt.encode(
                {**claims, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)},
                secret,
                "HS256",
            ),
            "alg none": jwt.encode({**claims, "role": "SUPER_ADMIN"}, None, algorithm="none"),
            "other key": jwt.encode(claims, "not-the-server-secret-0123456789abcdef", "HS256"),
            "tampered": tokens["access_token"][:-4]
            + ("AAAA" if not tokens["access_token"].endswith("AAAA") else "BBBB"),
            "other alg": jwt.encode(claims, secret, "HS512"),
            "garbage": "not.a.jwt",
        }
        for name, token in forged.items():
            response = await client.get("/api/v1/auth/me", headers=bearer(token))
            assert response.status_code == 401, name
            assert response.json()["error_code"] == "NOT_AUTHENTICATED", name


async def test_failed_logins_lock_the_account_with_back_off(make_client: ClientFactory) -> None:
    async with make_client(
        login_max_failures=3, login_lockout_minutes=1, rate_limit_auth="1000/minute"
    ) as (client, _):
        await register(client, "alice")
        for _ in range(3):
            bad = await client.post(
                "/api/v1/auth/login", json={"username": "alice", "password": "wrong-pass"}
            )
            assert bad.status_code == 401
        locked = await client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        assert locked.status_code == 429 and locked.json()["error_code"] == "ACCOUNT_LOCKED"
        assert 0 < int(locked.headers["Retry-After"]) <= 60
        # Unknown names lock the same way: a lock reveals nothing about existence.
        for _ in range(3):
            await client.post(
                "/api/v1/auth/login", json={"username": "ghost", "password": "wrong-pass"}
            )
        ghost = await client.post(
            "/api/v1/auth/login", json={"username": "ghost", "password": "x-wrong-x"}
        )
        assert ghost.status_code == 429 and ghost.json()["error_code"] == "ACCOUNT_LOCKED"


async def test_too_many_failures_from_one_address_are_refused(make_client: ClientFactory) -> None:
    async with make_client(login_ip_max_failures=4, rate_limit_auth="1000/minute") as (client, _):
        await register(client, "alice")
        for n in range(4):
            await client.post(
                "/api/v1/auth/login", json={"username": f"user{n}", "password": "wrong-pass"}
            )
        refused = await client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        assert refused.status_code == 429 and refused.json()["error_code"] == "ACCOUNT_LOCKED"


async def test_admin_only_registration(make_client: ClientFactory) -> None:
    async with make_client(registration_mode="admin_only") as (client, _):
        admin = await register(client, "root")  # the first user may always register
        closed = await client.post(
            "/api/v1/auth/register", json={"username": "bob", "password": PASSWORD}
        )
        assert closed.status_code == 403 and closed.json()["error_code"] == "REGISTRATION_CLOSED"
        await register(client, "bob", **bearer(admin["access_token"]))
        bob = (
            await client.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD})
        ).json()
        by_user = await client.post(
            "/api/v1/auth/register",
            json={"username": "carl", "password": PASSWORD},
            headers=bearer(bob["access_token"]),
        )
        assert by_user.status_code == 403


async def test_auth_endpoints_are_rate_limited_per_ip(make_client: ClientFactory) -> None:
    async with make_client(rate_limit_auth="3/minute") as (client, _):
        codes = [
            (
                await client.post(
                    "/api/v1/auth/login", json={"username": "x", "password": "y-y-y-y"}
                )
            ).status_code
            for _ in range(4)
        ]
        assert codes[:3] == [401, 401, 401]
        limited = await client.post(
            "/api/v1/auth/login", json={"username": "x", "password": "y-y-y-y"}
        )
        assert limited.status_code == 429 and limited.json()["error_code"] == "RATE_LIMITED"
        assert int(limited.headers["Retry-After"]) >= 1


async def test_order_placement_has_its_own_limit(make_client: ClientFactory) -> None:
    async with make_client(rate_limit_orders="2/minute") as (client, _):
        tokens = await register(client, "alice")
        config = await client.post(
            "/api/v1/brokers/configs",
            json={"broker": "paper", "name": "p"},
            headers=bearer(tokens["access_token"]),
        )
        body = {
            "config_id": config.json()["config_id"],
            "order": {"symbol": "TCS", "side": "BUY", "order_type": "MARKET", "quantity": 1},
            "intentional": True,  # the same order again on purpose: not a duplicate
        }
        codes = [
            (
                await client.post(
                    "/api/v1/brokers/orders/place",
                    json=body,
                    headers=bearer(tokens["access_token"]),
                )
            ).status_code
            for _ in range(3)
        ]
        assert codes == [201, 201, 429]
        # Reads are not held back by the order limit.
        assert (
            await client.get("/api/v1/brokers/orders", headers=bearer(tokens["access_token"]))
        ).status_code == 200


async def test_security_headers(make_client: ClientFactory) -> None:
    async with make_client() as (client, _):
        response = await client.get("/health")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_cors_and_trusted_hosts(make_client: ClientFactory) -> None:
    async with make_client(cors_origins="https://app.example", allowed_hosts="test") as (client, _):
        preflight = await client.options(
            "/api/v1/brokers/orders",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        foreign = await client.options(
            "/api/v1/brokers/orders",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in foreign.headers
        wrong_host = await client.get("/health", headers={"Host": "evil.example"})
        assert wrong_host.status_code == 400


async def test_rate_limits_are_shared_through_redis(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """Two API instances on one Redis count one budget: what one spent, the other refuses."""
    # A fresh client address per run, so counters left in Redis by earlier runs don't count.
    address = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
    settings = make_settings(
        tmp_path, database_url, redis_url=redis_url, rate_limit_auth="3/minute"
    )
    runtime = Runtime(settings)
    await runtime.start(worker=False, market=False, health_monitor=False)
    try:
        instances = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(
                    app=create_app(runtime=runtime), client=(address, 4000 + n)
                ),
                base_url="http://test",
            )
            for n in range(2)
        ]
        wrong = {"username": "nobody", "password": "not-the-password"}
        codes = []
        for n in range(4):
            response = await instances[n % 2].post("/api/v1/auth/login", json=wrong)
            codes.append(response.status_code)
        assert codes == [401, 401, 401, 429]
        assert response.json()["error_code"] == "RATE_LIMITED"
        for client in instances:
            await client.aclose()
    finally:
        await runtime.stop()
