"""Run the seed README's Python examples (``block_*.py``, verbatim but for the import root)
against an embedded trading-backend, the way a notebook would: one event loop, one shared
namespace, top-level ``await`` allowed.

First create the users and broker configs the examples name (``examples/seed/setup.sh``).
Then:  python examples/seed/run.py

The last block is a standalone script ending in ``asyncio.run(...)``: it runs on its own,
after the others, with the import lines of the earlier blocks in front of it. Two things
are added around the verbatim blocks and said here so nothing is hidden: the examples use
``remove_user_broker`` without importing it, so it is imported up front; and the
error-handling functions the seed only defines are then called, with an order too large
for the account so that the INSUFFICIENT_FUNDS branch runs.
"""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PREAMBLE = "from trading_backend.core.multi_user_broker_manager import remove_user_broker\n"


def _blocks() -> list[Path]:
    return sorted(HERE.glob("block_*.py"))


async def _run_block(path: Path, namespace: dict[str, Any]) -> None:
    print(f"\n##### {path.name}", flush=True)
    code = compile(path.read_text(), str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await result


DRIVER = """
from trading_backend.brokers.base import BrokerOrder
from trading_backend.models.base import OrderSide, OrderType, ProductType
user_id, config_id = "user1", "angel_config1"
order = BrokerOrder(symbol="TCS", exchange="NSE", side=OrderSide.BUY, order_type=OrderType.LIMIT,
                    product_type=ProductType.DELIVERY, quantity=100000, price=3000.0)
await handle_trading_operation()
robust = await robust_order_placement(user_id, config_id, BrokerOrder(
    symbol="INFY", exchange="NSE", side=OrderSide.BUY, order_type=OrderType.MARKET,
    product_type=ProductType.DELIVERY, quantity=1))
print(f"robust_order_placement: success={robust.success} error_code={robust.error_code}")
await monitor_system_health()
await multi_user_broker_manager.shutdown()
"""


async def _notebook(blocks: list[Path]) -> None:
    namespace: dict[str, Any] = {"__name__": "__seed__"}
    exec(PREAMBLE, namespace)
    for path in blocks:
        await _run_block(path, namespace)
    print("\n##### driver: calling the error-handling examples", flush=True)
    code = compile(DRIVER, "<driver>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await result


def _imports_of(blocks: list[Path]) -> str:
    lines: list[str] = [PREAMBLE]
    for path in blocks:
        tree = ast.parse(path.read_text().replace("await ", ""))  # imports only
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                lines.append(ast.unparse(node) + "\n")
    return "".join(lines)


def main() -> None:
    blocks = _blocks()
    if not blocks:
        sys.exit("no example blocks found; run examples/seed/extract.py")
    *notebook, script = blocks
    asyncio.run(_notebook(notebook))
    print(f"\n##### {script.name} (standalone script)", flush=True)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(_imports_of(notebook) + script.read_text(), namespace)


if __name__ == "__main__":
    main()
