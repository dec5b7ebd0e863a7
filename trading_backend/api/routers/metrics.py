"""Prometheus metrics (risk rejections and breaches, and the process's own figures).

Administrators only: a scraper authenticates with an API key of the admin scope
(``Authorization: Bearer`` or ``X-API-Key``). Not in the OpenAPI schema: it is plain text
in Prometheus' exposition format, not JSON.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trading_backend.api.deps import AdminDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(_: AdminDep) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
