"""Two-factor authentication (TOTP): enrol, confirm, disable, recovery codes.

Everything but the status needs a password login (a Bearer JWT): an API key cannot turn
2FA on or off, see a secret or get recovery codes. Responses that carry a secret or
recovery codes are sent with ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from trading_backend.accounts.service import UserInfo
from trading_backend.accounts.two_factor import qr_svg
from trading_backend.api.deps import AuthDep, RuntimeDep, UserDep, client_ip
from trading_backend.api.schemas import ErrorOut
from trading_backend.domain import DomainError, ErrorCode

router = APIRouter(prefix="/api/v1/auth/2fa", tags=["2fa"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
}
CODE_DESCRIPTION = "a 6-digit code from the authenticator app, or a recovery code"


async def password_login_user(auth: AuthDep) -> UserInfo:
    if auth.via != "jwt":
        raise DomainError(
            "log in with your password to manage two-factor authentication", ErrorCode.FORBIDDEN
        )
    return auth.user


JwtUserDep = Annotated[UserInfo, Depends(password_login_user)]


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=32, description=CODE_DESCRIPTION)


class DisableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=256)
    code: str = Field(min_length=1, max_length=32, description=CODE_DESCRIPTION)


class TwoFactorStatusOut(BaseModel):
    enabled: bool
    recovery_codes_left: int


class EnrolmentOut(BaseModel):
    secret: str = Field(description="base32 TOTP secret, for typing into the app by hand")
    otpauth_uri: str
    qr_svg: str = Field(description="the otpauth URI as a QR code (SVG markup)")


class ConfirmOut(BaseModel):
    enabled: bool
    recovery_codes: list[str] = Field(description="one-time codes; shown only this once")


class DisableOut(BaseModel):
    enabled: bool


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(description="one-time codes; shown only this once")


@router.get("", response_model=TwoFactorStatusOut, responses={401: {"model": ErrorOut}})
async def status(user: UserDep, runtime: RuntimeDep) -> TwoFactorStatusOut:
    """Whether 2FA is on, and how many unused recovery codes are left."""
    service = runtime.two_factor
    return TwoFactorStatusOut(
        enabled=await service.is_enabled(user.id),
        recovery_codes_left=await service.recovery_codes_left(user.id),
    )


@router.post("/enrol", status_code=201, response_model=EnrolmentOut, responses=ERRORS)
async def enrol(
    user: JwtUserDep, runtime: RuntimeDep, request: Request, response: Response
) -> EnrolmentOut:
    """Start enrolment: a new secret to add to an authenticator app (scan ``qr_svg``).
    2FA is not on until ``/confirm``; enrolling again replaces the pending secret."""
    enrolment = await runtime.two_factor.enrol(user.id, ip=client_ip(request))
    response.headers.update(NO_STORE)
    return EnrolmentOut(
        secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri, qr_svg=enrolment.qr_svg
    )


@router.get(
    "/qr.svg",
    response_class=Response,
    responses={
        200: {
            "description": "the pending enrolment's otpauth URI as a QR code",
            "content": {"image/svg+xml": {"schema": {"type": "string"}}},
        },
        404: {"model": ErrorOut, "description": "no enrolment in progress"},
        **ERRORS,
    },
)
async def qr_code(user: JwtUserDep, runtime: RuntimeDep) -> Response:
    """The QR code of the enrolment in progress. Once 2FA is enabled it is refused (409):
    an enabled secret is never shown again."""
    enrolment = await runtime.two_factor.pending_enrolment(user.id)
    return Response(
        qr_svg(enrolment.otpauth_uri, xml_declaration=True),
        media_type="image/svg+xml",
        headers=NO_STORE,
    )


@router.post("/confirm", response_model=ConfirmOut, responses=ERRORS)
async def confirm(
    body: CodeIn, user: JwtUserDep, runtime: RuntimeDep, request: Request, response: Response
) -> ConfirmOut:
    """Turn 2FA on with a first code from the app. Returns the recovery codes, once."""
    codes = await runtime.two_factor.confirm(user.id, body.code, ip=client_ip(request))
    response.headers.update(NO_STORE)
    return ConfirmOut(enabled=True, recovery_codes=codes)


@router.post("/disable", response_model=DisableOut, responses=ERRORS)
async def disable(
    body: DisableIn, user: JwtUserDep, runtime: RuntimeDep, request: Request
) -> DisableOut:
    """Turn 2FA off: needs the password and a code (or a recovery code)."""
    await runtime.two_factor.disable(user.id, body.password, body.code, ip=client_ip(request))
    return DisableOut(enabled=False)


@router.post("/recovery-codes", response_model=RecoveryCodesOut, responses=ERRORS)
async def regenerate_recovery_codes(
    body: CodeIn, user: JwtUserDep, runtime: RuntimeDep, request: Request, response: Response
) -> RecoveryCodesOut:
    """Replace all recovery codes with ten new ones (needs a code)."""
    codes = await runtime.two_factor.regenerate_recovery_codes(
        user.id, body.code, ip=client_ip(request)
    )
    response.headers.update(NO_STORE)
    return RecoveryCodesOut(recovery_codes=codes)
