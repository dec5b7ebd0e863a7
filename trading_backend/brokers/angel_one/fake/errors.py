"""The one exception the fake's business logic raises; the app turns it into the exact
envelope the real service would send (standard dialect or gateway dialect)."""

from __future__ import annotations

from trading_backend.brokers.angel_one.protocol import ERROR_MESSAGES

# Undocumented for order fields: the real service's code for a malformed field is not known,
# so the fake uses the documented GTT "Invalid Parameters" code (not transient, not a session
# error), which an adapter maps to "invalid order" like any unknown order-route code.
INVALID_PARAMETERS = "AB9001"


class FakeAPIError(Exception):
    """A SmartAPI-style failure: ``code`` (ABxxxx/AGxxxx), ``message``, and whether it is
    sent in the gateway dialect (``success``/``errorCode``) rather than ``status``/``errorcode``."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        gateway: bool = False,
        http_status: int = 200,
    ) -> None:
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, code)
        self.gateway = gateway
        self.http_status = http_status
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, object]:
        if self.gateway:
            return {"success": False, "message": self.message, "errorCode": self.code, "data": ""}
        return {"status": False, "message": self.message, "errorcode": self.code, "data": None}
