"""Liveness and readiness: database, queue, broker sessions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from trading_backend.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="System health (database, queue, broker sessions)")
async def health(runtime: RuntimeDep) -> Any:
    report = await runtime.health()
    return JSONResponse(report, status_code=200 if report["status"] == "healthy" else 503)
