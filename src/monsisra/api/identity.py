"""JSON routes of the second factor (``/api/v1/me/totp``) and of the CPS card login for
practice software (``/api/v1/auth/certificate``). The rules are in services/totp.py and cps.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from monsisra.api import certificates
from monsisra.api.deps import client_address, get_core, resolve_actor
from monsisra.config import Settings
from monsisra.services import accounts, cps, signin, totp
from monsisra.services.core import Actor, Core

router = APIRouter(prefix="/api/v1", tags=["identity"])
CoreDep = Annotated[Core, Depends(get_core)]


async def enrolling_actor(request: Request) -> Actor:
    """The acting account, including a session limited to enrolling its second factor."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return await accounts.actor_for_token(request.app.state.core, token.strip(), client_address(request),
                                              allow_limited=True)
    return await resolve_actor(request, None)


EnrollingActor = Annotated[Actor, Depends(enrolling_actor)]


class OtpIn(BaseModel):
    otp: str = Field(min_length=1, max_length=40)


class TotpOut(BaseModel):
    secret: str
    otpauth_uri: str
    recovery_codes: list[str]


@router.get("/me/totp")
async def totp_status(core: CoreDep, actor: EnrollingActor) -> dict[str, Any]:
    """Is the second factor active, required, how many recovery codes and remembered browsers are left."""
    return await totp.status(core, actor)


@router.post("/me/totp", response_model=TotpOut)
async def totp_enrol(core: CoreDep, actor: EnrollingActor) -> TotpOut:
    """A new TOTP secret (and its ``otpauth://`` URI) and ten recovery codes, shown this once;
    active after ``POST /api/v1/me/totp/confirm`` with a first code."""
    return TotpOut(**(await totp.begin_enrolment(core, actor)).as_dict())


@router.post("/me/totp/confirm")
async def totp_confirm(body: OtpIn, core: CoreDep, actor: EnrollingActor) -> dict[str, Any]:
    """Confirm the enrolment with a first code; from now on ``/auth/token`` needs ``otp``."""
    return await totp.confirm_enrolment(core, actor, body.otp)


@router.post("/me/totp/recovery-codes")
async def totp_recovery_codes(body: OtpIn, core: CoreDep, actor: EnrollingActor) -> dict[str, Any]:
    """Ten new recovery codes on a current code; the previous ones stop working."""
    return {"recovery_codes": await totp.new_recovery_codes(core, actor, body.otp)}


@router.delete("/me/totp")
async def totp_disable(body: OtpIn, core: CoreDep, actor: EnrollingActor) -> dict[str, Any]:
    """Turn the second factor off (refused where the platform requires it)."""
    return await totp.disable(core, actor, body.otp)


@router.delete("/me/totp/browsers", status_code=204)
async def totp_forget_browsers(core: CoreDep, actor: EnrollingActor) -> Response:
    """Forget every browser remembered after the second factor: each asks for a code again."""
    await totp.forget_browsers(core, actor)
    return Response(status_code=204)


@router.post("/auth/certificate", tags=["auth"])
async def certificate_token(request: Request, core: CoreDep) -> dict[str, Any]:
    """A bearer token for the holder of the CPS card presented at the TLS handshake (or
    forwarded by a trusted reverse proxy)."""
    login = await cps.login(core, certificates.presented(request), client_address(request))
    token = await signin.open_session(core, login, kind="api", client=client_address(request))
    return {"access_token": token, "token_type": "bearer", "expires_in": core.settings.token_ttl_seconds}


def install(app: FastAPI, settings: Settings) -> None:
    """The routes, and the audit of client certificates the TLS handshake refused (serving.py)."""
    app.include_router(router)
    app.state.tls_refused = cps.record_refusal
