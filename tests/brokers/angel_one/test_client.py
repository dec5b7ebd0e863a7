"""``SmartApiClient`` against scripted replies (httpx.MockTransport): headers, bodies,
envelope dialects and the failure classes (retry reads only; writes are sent once)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from trading_backend.brokers.angel_one.circuit import OPEN, CircuitBreaker, CircuitOpen
from trading_backend.brokers.angel_one.client import (
    SmartApiClient,
    error_from_envelope,
    strip_bearer,
)
from trading_backend.brokers.angel_one.protocol import RATE_LIMIT_TEXT, Envelope
from trading_backend.brokers.angel_one.ratelimit import ClientRateLimiter, RateLimited
from trading_backend.brokers.base import (
    BrokerAuthError,
    BrokerRejected,
    BrokerTimeout,
    BrokerUnavailable,
    InsufficientFunds,
)
from trading_backend.domain import ErrorCode

OK = {"status": True, "message": "SUCCESS", "errorcode": "", "data": {"x": 1}}

Handler = Callable[[httpx.Request], httpx.Response]


async def no_sleep(_: float) -> None:
    return None


def client(handler: Handler, **kw: object) -> tuple[SmartApiClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    limiter = ClientRateLimiter("A1", limits={}, sleep=no_sleep)
    made = SmartApiClient(
        "key-123",
        client_code="A1",
        base_url="http://angel.test",
        transport=httpx.MockTransport(record),
        limiter=limiter,
        sleep=no_sleep,
        mac_address="aa:bb:cc:dd:ee:ff",
        **kw,  # type: ignore[arg-type]
    )
    return made, seen


async def test_headers_of_section_1_3_and_bearer_only_after_login() -> None:
    api, seen = client(lambda r: httpx.Response(200, json=OK))
    await api.call("login", {"clientcode": "A1", "password": "1234", "totp": "000000"})
    await api.call("profile", jwt="Bearer jwt-abc")
    login, profile = seen
    for request in seen:
        assert request.headers["X-PrivateKey"] == "key-123"
        assert request.headers["X-UserType"] == "USER"
        assert request.headers["X-SourceID"] == "WEB"
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Content-type"] == "application/json"
        assert request.headers["X-MACAddress"] == "aa:bb:cc:dd:ee:ff"
        assert "X-ClientLocalIP" in request.headers and "X-ClientPublicIP" in request.headers
    assert "Authorization" not in login.headers
    assert profile.headers["Authorization"] == "Bearer jwt-abc"  # never "Bearer Bearer"
    assert profile.method == "GET" and profile.url.path.endswith("/user/v1/getProfile")
    assert login.url.path == "/rest/auth/angelbroking/user/v1/loginByPassword"
    await api.aclose()


async def test_post_body_drops_none_values() -> None:
    api, seen = client(lambda r: httpx.Response(200, json=OK))
    await api.call("ltp", {"exchange": "NSE", "tradingsymbol": "SBIN-EQ", "x": None}, jwt="j")
    assert json.loads(seen[0].content) == {"exchange": "NSE", "tradingsymbol": "SBIN-EQ"}
    await api.aclose()


def test_strip_bearer() -> None:
    assert strip_bearer("Bearer abc") == "abc"
    assert strip_bearer("bearer Bearer abc") == "abc"
    assert strip_bearer("abc") == "abc"
    assert strip_bearer(None) is None


async def test_both_envelope_dialects_are_decoded() -> None:
    replies = iter(
        [
            {"success": False, "message": "Invalid Token", "errorCode": "AG8001", "data": ""},
            {"status": "false", "message": "x", "errorcode": "AB1008", "data": "null"},
        ]
    )
    api, _ = client(lambda r: httpx.Response(200, json=next(replies)))
    gateway = await api.call("profile", jwt="j")
    assert (gateway.ok, gateway.error_code, gateway.gateway) == (False, "AG8001", True)
    standard = await api.call("cancel_order", {"orderid": "1"}, jwt="j")
    assert (standard.ok, standard.error_code, standard.data) == (False, "AB1008", None)
    await api.aclose()


async def test_plain_text_403_is_rate_limited_without_retry_and_backs_off() -> None:
    api, seen = client(lambda r: httpx.Response(403, text=RATE_LIMIT_TEXT))
    with pytest.raises(RateLimited) as info:
        await api.call("quote", {"mode": "LTP"}, jwt="j")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert len(seen) == 1  # a read, yet not retried: retrying only digs deeper
    # The group is now backed off client-side: the next call fails without a request.
    api.limiter.max_wait = 1.0
    api.limiter._limits["quote"] = (10, 500, 5000)
    api.limiter._groups.clear()
    api.limiter.penalise("quote", 60)
    with pytest.raises(RateLimited):
        await api.call("quote", {"mode": "LTP"}, jwt="j")
    assert len(seen) == 1
    await api.aclose()


async def test_5xx_on_a_read_is_retried_then_succeeds() -> None:
    replies = iter(
        [httpx.Response(502, text="<html>bad gateway</html>"), httpx.Response(200, json=OK)]
    )
    api, seen = client(lambda r: next(replies))
    envelope = await api.call("order_book", jwt="j")
    assert envelope.ok and len(seen) == 2
    await api.aclose()


async def test_5xx_on_a_read_after_retries_is_unavailable() -> None:
    api, seen = client(lambda r: httpx.Response(503, text="down"), read_retries=2)
    with pytest.raises(BrokerUnavailable) as info:
        await api.call("positions", jwt="j")
    assert not isinstance(info.value, BrokerTimeout)
    assert len(seen) == 3
    await api.aclose()


async def test_5xx_on_a_write_is_sent_once_and_fate_unknown() -> None:
    api, seen = client(lambda r: httpx.Response(503, text="down"))
    with pytest.raises(BrokerTimeout):
        await api.call("place_order", {"ordertag": "t"}, jwt="j")
    assert len(seen) == 1
    await api.aclose()


async def test_empty_body_on_a_write_is_fate_unknown() -> None:
    api, seen = client(lambda r: httpx.Response(200, content=b""))
    with pytest.raises(BrokerTimeout) as info:
        await api.call("place_order", {"ordertag": "t"}, jwt="j")
    assert info.value.code is ErrorCode.TIMEOUT
    assert len(seen) == 1
    await api.aclose()


async def test_read_timeout_on_a_write_is_fate_unknown_connect_error_is_not_sent() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api, seen = client(timeout)
    with pytest.raises(BrokerTimeout):
        await api.call("modify_order", {"orderid": "1"}, jwt="j")
    assert len(seen) == 1
    await api.aclose()
    api, seen = client(refused)
    with pytest.raises(BrokerUnavailable) as info:
        await api.call("place_order", {"ordertag": "t"}, jwt="j")
    assert not isinstance(info.value, BrokerTimeout)
    await api.aclose()


async def test_transient_angel_error_on_a_read_is_retried() -> None:
    replies = iter(
        [
            httpx.Response(200, json={"status": False, "errorcode": "AB1004", "message": "x"}),
            httpx.Response(200, json=OK),
        ]
    )
    api, seen = client(lambda r: next(replies))
    assert (await api.call("rms", jwt="j")).ok
    assert len(seen) == 2
    await api.aclose()


async def test_secrets_are_not_in_the_repr() -> None:
    api, _ = client(lambda r: httpx.Response(200, json=OK))
    assert "key-123" not in repr(api)
    await api.aclose()


@pytest.mark.parametrize(
    ("code", "message", "route", "cls", "ours"),
    [
        ("AG8001", "Invalid Token", "profile", BrokerAuthError, ErrorCode.AUTH_ERROR),
        ("AB1050", "Invalid totp", "login", BrokerAuthError, ErrorCode.INVALID_TOTP),
        (
            "AB1009",
            "Symbol Not Found",
            "place_order",
            BrokerRejected,
            ErrorCode.INSTRUMENT_NOT_FOUND,
        ),
        ("AB4008", "ordertag length", "place_order", BrokerRejected, ErrorCode.VALIDATION_ERROR),
        ("AB2001", "Internal Error", "rms", BrokerUnavailable, ErrorCode.BROKER_UNAVAILABLE),
        ("AB9999", "odd", "place_order", BrokerRejected, ErrorCode.INVALID_ORDER),
        ("AB9999", "odd", "rms", Exception, ErrorCode.SYSTEM_ERROR),
        (
            "AB4036",
            "Insufficient Funds in your account",
            "place_order",
            InsufficientFunds,
            ErrorCode.INSUFFICIENT_FUNDS,
        ),
    ],
)
def test_error_codes_map_to_ours(
    code: str, message: str, route: str, cls: type[Exception], ours: ErrorCode
) -> None:
    error = error_from_envelope(Envelope(False, message, code, None), route)
    assert isinstance(error, cls)
    assert error.code is ours
    assert code in error.message


async def test_circuit_opens_after_consecutive_failures_and_fails_fast() -> None:
    now = [0.0]
    circuit = CircuitBreaker(
        "angel_one", "cfg-c", failure_threshold=2, cooldown=30, clock=lambda: now[0]
    )
    api, seen = client(lambda r: httpx.Response(503, text="down"), read_retries=0, circuit=circuit)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            await api.call("rms", jwt="j")
    assert circuit.state == OPEN
    with pytest.raises(CircuitOpen) as info:
        await api.call("rms", jwt="j")
    assert info.value.code is ErrorCode.BROKER_UNAVAILABLE
    assert len(seen) == 2  # the third call never left
    circuit.forget()
    await api.aclose()
