"""``/metrics``: Prometheus text for administrators, with the risk engine's counters."""

from __future__ import annotations

import httpx

from tests.api.conftest import register


async def test_metrics_for_admins_only_and_counting_risk_rejections(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client, "root")  # the first user is an administrator
    user = await register(client, "alice")
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=user.headers)).status_code == 403

    refused = await client.post(
        "/api/v1/brokers/orders/place",
        json={
            "config_id": user.config_id,
            "order": {"symbol": "TCS", "side": "BUY", "order_type": "MARKET", "quantity": 9999},
        },
        headers=user.headers,
    )
    assert refused.status_code == 422 and refused.json()["error_code"] == "RISK_REJECTED"
    rule = refused.json()["details"]["rule"]

    scraped = await client.get("/metrics", headers=admin.headers)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    line = next(
        row
        for row in scraped.text.splitlines()
        if row.startswith(f'trading_backend_risk_rejections_total{{rule="{rule}"}}')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
