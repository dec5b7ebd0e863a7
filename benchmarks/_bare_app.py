"""The ceiling for the order-pipeline benchmark: a bare FastAPI endpoint that validates the
same payload with the same models and answers at once (no auth, storage, queue or broker)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import FastAPI

from trading_backend.api.schemas import PlaceOrderIn

app = FastAPI()


@app.post("/api/v1/brokers/orders/place", status_code=201)
async def place(body: PlaceOrderIn) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "order_id": uuid.uuid4().hex[:20],
        "config_id": body.config_id,
        **body.order.model_dump(mode="json"),
        "status": "FILLED",
        "filled_quantity": body.order.quantity,
        "created_at": now,
        "updated_at": now,
    }
