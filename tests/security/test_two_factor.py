"""Two-factor authentication (TOTP + recovery codes): enrolment, login, replay refusal,
disabling, the admin requirement, and concurrent use of one code.

Every test runs on SQLite and, with TEST_DATABASE_URL, on PostgreSQL. Time is never
waited for: service-level tests pass ``now=`` explicitly, and HTTP tests generate the
"next" code with ``totp.at(time.time() + 30)``, which the server's valid window accepts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.api.conftest import Account
from tests.conftest import make_settings
from tests.security.support import PASSWORD, ClientFactory, bearer, register
from trading_backend.accounts.service import UserInfo
from trading_backend.accounts.two_factor import RECOVERY_CODE_COUNT, TwoFactorService
from trading_backend.api.app import create_app
from trading_backend.api.deps import AuthContext
from trading_backend.api.routers import two_factor
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.runtime import Runtime
from trading_backend.storage.models import AuditLogRow, RecoveryCodeRow, User

T0 = 1_500_000_000.0  # a fixed moment in the past, aligned to a 30-second step
STEP = 30


# -- fixtures: the API with the 2FA router ----------------------------------------------------
def _includes_two_factor(routes: Iterable[Any]) -> bool:
    # Recent FastAPI keeps an included router as one ``_IncludedRouter`` entry (no
    # ``path``) that points at the original router: look through those too.
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is two_factor.router:
            return True
        if included is not None and _includes_two_factor(included.routes):
            return True
        if str(getattr(route, "path", "")).startswith(two_factor.router.prefix):
            return True
    return False


def with_two_factor(app: FastAPI) -> FastAPI:
    """Include the 2FA router unless app.py already does."""
    if not _includes_two_factor(app.routes):
        app.include_router(two_factor.router)
    return app


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """Overrides the shared ``client`` (and so the client behind ``alice``)."""
    transport = httpx.ASGITransport(app=with_two_factor(create_app(runtime=runtime)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
def make_client(tmp_path: Path, database_url: str) -> ClientFactory:
    """Like the shared ``make_client`` (tests/security/support.py), with the 2FA router."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        runtime = Runtime(make_settings(tmp_path, database_url, **overrides))
        await runtime.start(worker=True, market=False, health_monitor=False)
        app = with_two_factor(create_app(runtime=runtime))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield http, runtime
        finally:
            await runtime.stop()

    return factory


# -- helpers ------------------------------------------------------------------------------------
def wrong_code(totp: pyotp.TOTP, around: float) -> str:
    """A 6-digit code that is wrong for every step near ``around``."""
    near = {totp.at(around + k * STEP) for k in range(-3, 4)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


async def login(
    client: httpx.AsyncClient, username: str, code: str | None = None, password: str = PASSWORD
) -> httpx.Response:
    body: dict[str, Any] = {"username": username, "password": password}
    if code is not None:
        body["totp_code"] = code
    return await client.post("/api/v1/auth/login", json=body)


async def enable_over_http(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[pyotp.TOTP, list[str]]:
    enrolled = await client.post("/api/v1/auth/2fa/enrol", headers=headers)
    assert enrolled.status_code == 201, enrolled.text
    totp = pyotp.TOTP(enrolled.json()["secret"])
    confirmed = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": totp.now()}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    return totp, confirmed.json()["recovery_codes"]


async def enable_in_service(
    service: TwoFactorService, user_id: str
) -> tuple[pyotp.TOTP, list[str]]:
    enrolment = await service.enrol(user_id)
    totp = pyotp.TOTP(enrolment.secret)
    codes = await service.confirm(user_id, totp.at(T0), now=T0)
    return totp, codes


async def rejected(call: Any, code: ErrorCode) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await call
    assert caught.value.code is code, caught.value.message
    return caught.value


# -- the whole flow over HTTP -------------------------------------------------------------------
async def test_enrol_confirm_login_replay_recovery_and_disable(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    headers = alice.headers
    status = await client.get("/api/v1/auth/2fa", headers=headers)
    assert status.status_code == 200
    assert status.json() == {"enabled": False, "recovery_codes_left": 0}
    missing_qr = await client.get("/api/v1/auth/2fa/qr.svg", headers=headers)
    assert missing_qr.status_code == 404
    assert missing_qr.json()["error_code"] in ("NOT_FOUND", "TOTP_NOT_ENABLED")
    not_started = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": "123456"}, headers=headers
    )
    assert not_started.status_code == 409
    assert not_started.json()["error_code"] == "TOTP_NOT_ENABLED"

    # Enrol: the secret, its otpauth URI and QR code; stored encrypted, 2FA not yet on.
    enrolled = await client.post("/api/v1/auth/2fa/enrol", headers=headers)
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.headers["cache-control"] == "no-store"
    body = enrolled.json()
    secret = body["secret"]
    totp = pyotp.TOTP(secret)
    assert body["otpauth_uri"].startswith("otpauth://totp/")
    assert "issuer=trading-backend" in body["otpauth_uri"]
    assert "alice" in body["otpauth_uri"] and secret in body["otpauth_uri"]
    assert "<svg" in body["qr_svg"]
    async with runtime.db() as session:
        row = await session.get(User, alice.user_id)
        assert row is not None
        assert row.totp_secret_encrypted and secret not in row.totp_secret_encrypted
        assert row.totp_enabled is False
    qr = await client.get("/api/v1/auth/2fa/qr.svg", headers=headers)
    assert qr.status_code == 200
    assert qr.headers["content-type"].startswith("image/svg+xml")
    assert qr.headers["cache-control"] == "no-store"
    assert qr.text.lstrip().startswith(("<?xml", "<svg")) and "<svg" in qr.text
    assert (await login(client, "alice")).status_code == 200  # not on until confirmed

    # Confirm: a wrong code is refused, the right one enables 2FA and gives the codes once.
    wrong = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": wrong_code(totp, time.time())}, headers=headers
    )
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "INVALID_TOTP"
    confirmed = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": totp.now()}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.headers["cache-control"] == "no-store"
    codes = confirmed.json()["recovery_codes"]
    assert confirmed.json()["enabled"] is True
    assert len(codes) == len(set(codes)) == RECOVERY_CODE_COUNT
    status = await client.get("/api/v1/auth/2fa", headers=headers)
    assert status.json() == {"enabled": True, "recovery_codes_left": RECOVERY_CODE_COUNT}
    again = await client.post("/api/v1/auth/2fa/enrol", headers=headers)
    assert again.status_code == 409 and again.json()["error_code"] == "CONFLICT"
    hidden = await client.get("/api/v1/auth/2fa/qr.svg", headers=headers)
    assert hidden.status_code == 409 and secret not in hidden.text
    async with runtime.db() as session:
        hashes = (
            await session.scalars(
                select(RecoveryCodeRow.code_hash).where(RecoveryCodeRow.user_id == alice.user_id)
            )
        ).all()
    assert len(hashes) == RECOVERY_CODE_COUNT
    assert not any(code in h or code.replace("-", "") in h for code in codes for h in hashes)

    # Login: the code is required, works once per time step, and never for an older step.
    needs_code = await login(client, "alice")
    assert needs_code.status_code == 401 and needs_code.json()["error_code"] == "TOTP_REQUIRED"
    bad = await login(client, "alice", wrong_code(totp, time.time()))
    assert bad.status_code == 401 and bad.json()["error_code"] == "INVALID_TOTP"
    next_code = totp.at(time.time() + STEP)  # the confirm spent the current step
    assert (await login(client, "alice", next_code)).status_code == 200
    replay = await login(client, "alice", next_code)
    assert replay.status_code == 401 and replay.json()["error_code"] == "INVALID_TOTP"
    assert "already used" in replay.json()["message"]
    older = await login(client, "alice", totp.now())
    assert older.status_code == 401 and older.json()["error_code"] == "INVALID_TOTP"

    # Recovery codes: each works once; spacing and case do not matter.
    assert (await login(client, "alice", codes[0])).status_code == 200
    reused = await login(client, "alice", codes[0])
    assert reused.status_code == 401 and reused.json()["error_code"] == "INVALID_TOTP"
    assert (await login(client, "alice", codes[1].replace("-", " ").upper())).status_code == 200
    status = await client.get("/api/v1/auth/2fa", headers=headers)
    assert status.json() == {"enabled": True, "recovery_codes_left": RECOVERY_CODE_COUNT - 2}

    # Disable: needs the password and a code.
    no_password = await client.post(
        "/api/v1/auth/2fa/disable",
        json={"password": "not-the-password", "code": codes[2]},
        headers=headers,
    )
    assert no_password.status_code == 401
    assert no_password.json()["error_code"] == "NOT_AUTHENTICATED"
    no_code = await client.post(
        "/api/v1/auth/2fa/disable",
        json={"password": PASSWORD, "code": wrong_code(totp, time.time())},
        headers=headers,
    )
    assert no_code.status_code == 401 and no_code.json()["error_code"] == "INVALID_TOTP"
    extra = await client.post(
        "/api/v1/auth/2fa/disable",
        json={"password": PASSWORD, "code": codes[2], "force": True},
        headers=headers,
    )
    assert extra.status_code == 422
    disabled = await client.post(
        "/api/v1/auth/2fa/disable", json={"password": PASSWORD, "code": codes[2]}, headers=headers
    )
    assert disabled.status_code == 200 and disabled.json() == {"enabled": False}
    assert (await login(client, "alice")).status_code == 200
    status = await client.get("/api/v1/auth/2fa", headers=headers)
    assert status.json() == {"enabled": False, "recovery_codes_left": 0}
    async with runtime.db() as session:
        row = await session.get(User, alice.user_id)
        assert row is not None
        assert (row.totp_enabled, row.totp_secret_encrypted, row.totp_last_step) == (
            False,
            None,
            None,
        )
        audit = (
            await session.scalars(
                select(AuditLogRow)
                .where(AuditLogRow.action.startswith("2fa."))
                .order_by(AuditLogRow.id)
            )
        ).all()
    actions = [a.action for a in audit]
    assert actions[:2] == ["2fa.enrol_started", "2fa.enabled"]
    assert actions.count("2fa.recovery_code_used") == 3 and actions[-1] == "2fa.disabled"
    leaked = [secret, *codes, *(c.replace("-", "") for c in codes)]
    assert not any(s in str(a.data) for a in audit for s in leaked)


async def test_recovery_codes_can_be_regenerated_over_http(
    client: httpx.AsyncClient, alice: Account
) -> None:
    totp, old_codes = await enable_over_http(client, alice.headers)
    wrong = await client.post(
        "/api/v1/auth/2fa/recovery-codes",
        json={"code": wrong_code(totp, time.time())},
        headers=alice.headers,
    )
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "INVALID_TOTP"
    fresh = await client.post(
        "/api/v1/auth/2fa/recovery-codes", json={"code": old_codes[0]}, headers=alice.headers
    )
    assert fresh.status_code == 200, fresh.text
    new_codes = fresh.json()["recovery_codes"]
    assert len(new_codes) == RECOVERY_CODE_COUNT and not set(new_codes) & set(old_codes)
    assert (await login(client, "alice", old_codes[1])).status_code == 401
    assert (await login(client, "alice", new_codes[0])).status_code == 200
    status = await client.get("/api/v1/auth/2fa", headers=alice.headers)
    assert status.json() == {"enabled": True, "recovery_codes_left": RECOVERY_CODE_COUNT - 1}


async def test_2fa_routes_need_a_caller_and_validate_bodies(
    client: httpx.AsyncClient, alice: Account
) -> None:
    assert (await client.get("/api/v1/auth/2fa")).status_code == 401
    assert (await client.post("/api/v1/auth/2fa/enrol")).status_code == 401
    too_long = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": "1" * 33}, headers=alice.headers
    )
    assert too_long.status_code == 422
    extra = await client.post(
        "/api/v1/auth/2fa/confirm", json={"code": "123456", "x": 1}, headers=alice.headers
    )
    assert extra.status_code == 422


async def test_api_keys_see_the_status_but_cannot_manage_two_factor(
    client: httpx.AsyncClient, alice: Account, runtime: Runtime
) -> None:
    user = UserInfo(id=alice.user_id, username="alice", role="USER")
    created = await runtime.api_keys.create(user, "bot", ["read", "trade"])
    key = {"X-API-Key": created.key}
    status = await client.get("/api/v1/auth/2fa", headers=key)
    assert status.status_code == 200 and status.json()["enabled"] is False
    for method, path, body in [
        ("POST", "/api/v1/auth/2fa/enrol", None),
        ("GET", "/api/v1/auth/2fa/qr.svg", None),
        ("POST", "/api/v1/auth/2fa/confirm", {"code": "123456"}),
        ("POST", "/api/v1/auth/2fa/disable", {"password": PASSWORD, "code": "123456"}),
        ("POST", "/api/v1/auth/2fa/recovery-codes", {"code": "123456"}),
    ]:
        response = await client.request(method, path, json=body, headers=key)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error_code"] == "FORBIDDEN"
    assert not await runtime.two_factor.is_enabled(alice.user_id)


async def test_api_key_callers_cannot_manage_two_factor() -> None:
    user = UserInfo(id="u1", username="alice", role="USER")
    via_key = AuthContext(user=user, via="api_key", scopes=frozenset({"admin"}))
    with pytest.raises(DomainError) as caught:
        await two_factor.password_login_user(via_key)
    assert caught.value.code is ErrorCode.FORBIDDEN
    via_jwt = AuthContext(user=user, via="jwt")
    assert await two_factor.password_login_user(via_jwt) == user


async def test_admins_need_two_factor_when_required(make_client: ClientFactory) -> None:
    async with make_client(require_admin_2fa=True) as (client, _):
        root = await register(client, "root")  # the first account is an ADMIN
        assert root["role"] == "ADMIN"
        headers = bearer(root["access_token"])
        refused = await client.get("/api/v1/admin/users", headers=headers)
        assert refused.status_code == 403 and refused.json()["error_code"] == "FORBIDDEN"

        totp, _ = await enable_over_http(client, headers)
        logged_in = await login(client, "root", totp.at(time.time() + STEP))
        assert logged_in.status_code == 200, logged_in.text
        users = await client.get(
            "/api/v1/admin/users", headers=bearer(logged_in.json()["access_token"])
        )
        assert users.status_code == 200, users.text
        assert [u["totp_enabled"] for u in users.json()] == [True]


# -- the service, with explicit times -------------------------------------------------------
async def test_time_steps_window_and_replay(runtime: Runtime) -> None:
    service = runtime.two_factor
    user = await runtime.accounts.create_user("carol", PASSWORD)
    await rejected(service.verify_second_factor(user.id, "123456"), ErrorCode.TOTP_NOT_ENABLED)
    await rejected(service.confirm(user.id, "123456", now=T0), ErrorCode.TOTP_NOT_ENABLED)

    # Re-enrolling before confirmation replaces the pending secret.
    first = await service.enrol(user.id)
    second = await service.enrol(user.id)
    assert first.secret != second.secret
    assert first.secret not in repr(first)
    await rejected(
        service.confirm(user.id, pyotp.TOTP(first.secret).at(T0), now=T0), ErrorCode.INVALID_TOTP
    )
    totp = pyotp.TOTP(second.secret)
    await rejected(service.confirm(user.id, "not a code", now=T0), ErrorCode.INVALID_TOTP)
    codes = await service.confirm(user.id, totp.at(T0), now=T0)  # spends the step of T0
    assert len(codes) == RECOVERY_CODE_COUNT
    assert await service.is_enabled(user.id)
    await rejected(service.enrol(user.id), ErrorCode.CONFLICT)
    await rejected(service.pending_enrolment(user.id), ErrorCode.CONFLICT)
    await rejected(service.confirm(user.id, totp.at(T0), now=T0), ErrorCode.CONFLICT)

    verify = service.verify_second_factor
    error = await rejected(verify(user.id, totp.at(T0), now=T0), ErrorCode.INVALID_TOTP)
    assert "already used" in error.message
    # Outside the window of one step either side: plainly wrong.
    await rejected(verify(user.id, totp.at(T0 + 2 * STEP), now=T0), ErrorCode.INVALID_TOTP)
    # The next step's code is accepted a step early (clock drift), with spaces, once.
    code = totp.at(T0 + STEP)
    await verify(user.id, f"{code[:3]} {code[3:]}", now=T0)
    await rejected(verify(user.id, code, now=T0 + STEP), ErrorCode.INVALID_TOTP)
    # A code older than the last accepted one stays refused though still in the window.
    await rejected(verify(user.id, totp.at(T0), now=T0 + STEP), ErrorCode.INVALID_TOTP)
    await verify(user.id, totp.at(T0 + 2 * STEP), now=T0 + 2 * STEP)
    await verify(user.id, totp.at(T0 + 3 * STEP), now=T0 + 3 * STEP)
    async with runtime.db() as session:
        row = await session.get(User, user.id)
        assert row is not None and row.totp_last_step == int(T0 // STEP) + 3

    # Recovery codes: once each; regenerating replaces them all.
    assert await service.recovery_codes_left(user.id) == RECOVERY_CODE_COUNT
    await verify(user.id, codes[0], ip="10.0.0.1")
    await rejected(verify(user.id, codes[0]), ErrorCode.INVALID_TOTP)
    await rejected(verify(user.id, "zzzzz-zzzzz"), ErrorCode.INVALID_TOTP)
    assert await service.recovery_codes_left(user.id) == RECOVERY_CODE_COUNT - 1
    fresh = await service.regenerate_recovery_codes(user.id, codes[1])
    assert await service.recovery_codes_left(user.id) == RECOVERY_CODE_COUNT
    await rejected(verify(user.id, codes[2]), ErrorCode.INVALID_TOTP)

    # Disable: the password first, then a code.
    await rejected(
        service.disable(user.id, "wrong-password", fresh[0]), ErrorCode.NOT_AUTHENTICATED
    )
    await rejected(
        service.disable(user.id, PASSWORD, totp.at(T0 + 3 * STEP)), ErrorCode.INVALID_TOTP
    )
    await service.disable(user.id, PASSWORD, fresh[0])
    assert not await service.is_enabled(user.id)
    assert await service.recovery_codes_left(user.id) == 0
    await rejected(service.disable(user.id, PASSWORD, fresh[1]), ErrorCode.TOTP_NOT_ENABLED)
    await rejected(verify(user.id, fresh[1]), ErrorCode.TOTP_NOT_ENABLED)


async def test_concurrent_use_of_one_code_passes_once(runtime: Runtime) -> None:
    service = runtime.two_factor
    user = await runtime.accounts.create_user("dave", PASSWORD)
    totp, codes = await enable_in_service(service, user.id)
    now = T0 + STEP

    async def attempt(code: str) -> bool:
        try:
            await service.verify_second_factor(user.id, code, now=now)
        except DomainError as exc:
            assert exc.code is ErrorCode.INVALID_TOTP
            return False
        return True

    results = await asyncio.gather(*(attempt(totp.at(now)) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    results = await asyncio.gather(*(attempt(codes[0]) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


async def test_a_stale_read_cannot_spend_a_step_twice(runtime: Runtime) -> None:
    """Both requests read the user before either writes: the conditional UPDATE is what
    refuses the second (the race that the concurrent test may or may not hit)."""
    service = runtime.two_factor
    user = await runtime.accounts.create_user("erin", PASSWORD)
    totp, _ = await enable_in_service(service, user.id)
    async with runtime.db() as session:
        stale = await session.get(User, user.id)
    assert stale is not None
    now = T0 + STEP
    await service.verify_second_factor(user.id, totp.at(now), now=now)
    await rejected(service._spend_totp(stale, totp.at(now), now), ErrorCode.INVALID_TOTP)
