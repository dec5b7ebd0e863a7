"""Run the fake Angel One SmartAPI for local development.

    python -m trading_backend.brokers.angel_one.fake --port 9000 \\
        --client A123456:1234:JBSWY3DPEHPK3PXP:my-api-key

Flags:
  --host HOST          interface to bind (default 127.0.0.1)
  --port PORT          port (default 9000; 0 picks a free one)
  --client SPEC        CLIENT_CODE:PIN:TOTP_BASE32_SECRET:API_KEY[:CASH]; repeatable
                       (default: the test client A123456:1234:JBSWY3DPEHPK3PXP:test-api-key)
  --seed N             seed for order ids, UUIDs and synthetic prices (default 0)
  --scrip-master FILE  serve/trade this OpenAPIScripMaster.json instead of the default set
  --no-rate-limit      switch the per-client-code rate limiter off

Point a client at it with root ``http://HOST:PORT``; WebSockets are at ``ws://HOST:PORT``
``/smart-stream`` (feed) and ``/smart-order-update`` (order status). Secrets given on the
command line are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from trading_backend.brokers.angel_one.fake.core import FakeSmartAPI
from trading_backend.brokers.angel_one.fake.server import running_fake

DEFAULT_CLIENT = "A123456:1234:JBSWY3DPEHPK3PXP:test-api-key"


def parse_client(spec: str) -> tuple[str, str, str, str, Decimal]:
    parts = spec.split(":")
    if len(parts) not in (4, 5) or not all(parts[:4]):
        raise argparse.ArgumentTypeError(
            "expected CLIENT_CODE:PIN:TOTP_SECRET:API_KEY[:CASH] (secret values not shown)"
        )
    try:
        cash = Decimal(parts[4]) if len(parts) == 5 else Decimal("1000000")
    except InvalidOperation:
        raise argparse.ArgumentTypeError("CASH must be a number") from None
    return parts[0], parts[1], parts[2], parts[3], cash


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trading_backend.brokers.angel_one.fake",
        description="Protocol-faithful fake Angel One SmartAPI (REST + order/feed WebSockets).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=9000, help="port (0 = any free port)")
    parser.add_argument(
        "--client",
        action="append",
        type=parse_client,
        metavar="CODE:PIN:TOTP_SECRET:API_KEY[:CASH]",
        help="a client account; repeatable (default: the test client A123456)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids and prices")
    parser.add_argument(
        "--scrip-master", type=Path, help="OpenAPIScripMaster.json to serve and trade"
    )
    parser.add_argument(
        "--no-rate-limit", action="store_true", help="disable the per-client rate limiter"
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    rows = None
    if args.scrip_master is not None:
        rows = json.loads(args.scrip_master.read_text())
    fake = FakeSmartAPI(instruments=rows, seed=args.seed)
    clients = args.client or [parse_client(DEFAULT_CLIENT)]
    for code, pin, secret, api_key, cash in clients:
        fake.add_client(code, pin, secret, api_key, cash)
    fake.faults.rate_limiting = not args.no_rate_limit
    async with running_fake(fake, args.host, args.port) as server:
        print(f"fake SmartAPI at {server.base_url}", file=sys.stderr)
        print(f"  feed        {server.feed_url}", file=sys.stderr)
        print(f"  order feed  {server.order_ws_url}", file=sys.stderr)
        print(f"  clients     {', '.join(c[0] for c in clients)}", file=sys.stderr)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
