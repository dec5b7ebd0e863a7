"""A fake strategy context and a deterministic bar-by-bar driver for the built-in strategies.

The matching model (deliberately tiny, so expected trades can be worked out by hand):

* the market moves in *steps*: step ``i`` holds every bar whose ``end`` is the ``i``-th
  distinct bar end in the input (one symbol: step ``i`` is bar ``i``). At a step the last
  price of each symbol with a bar becomes that bar's close; ``now()`` is the bar end;
* a MARKET order fills in full, inside ``place_order``, at the symbol's last price;
* a LIMIT order that is marketable when placed (BUY at or above the last price, SELL at or
  below) fills at once at its limit price; otherwise it works and fills in full, at its limit
  price, at the first *later* step whose bar for that symbol trades through it (BUY: low <=
  price, SELL: high >= price);
* ``place_order`` returns the order as the broker acknowledged it (OPEN, nothing filled,
  like the real queue), and every state change (fill, cancel, rejection) is delivered to
  ``on_order_update`` after the callback that caused it returns, in order;
* ``fail`` lets a test refuse orders: it gets the ``BrokerOrder`` and answers ``None``,
  ``"raise"`` (``place_order`` raises ``DomainError``) or ``"reject"`` (the order comes back
  REJECTED, and a REJECTED update follows).

The driver (``run``) calls ``on_start``, then for each step: matches working LIMIT orders
against the step's bars and delivers the updates, then calls ``on_bar`` for each subscribed
bar of the step (and ``on_tick`` with a tick made of the bar's close for ``ticks=True``
subscriptions), delivering updates after each callback. After every callback ``ctx.state``
must survive ``json.dumps``/``json.loads`` unchanged. ``restart_at=k`` throws the strategy
and its context away before step ``k`` and carries on with a new instance whose context holds
a JSON round-tripped copy of the state (the broker side, i.e. working orders and positions,
survives as it would at a real broker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trading_backend.domain import (
    Bar,
    BrokerOrder,
    DomainError,
    ErrorCode,
    Exchange,
    Fill,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    Timeframe,
)
from trading_backend.strategies.base import (
    BaseStrategy,
    OptionQuote,
    StrategyParams,
    TickView,
)

T0 = datetime(2025, 12, 1, 3, 45, tzinfo=UTC)  # Monday 09:15 IST

Chain = Sequence[OptionQuote] | Callable[[datetime], Sequence[OptionQuote]]
FailRule = Callable[[BrokerOrder], str | None]


def D(value: object) -> Decimal:
    return Decimal(str(value))


def make_bars(
    symbol: str,
    rows: Iterable[object],
    *,
    exchange: Exchange = Exchange.NSE,
    timeframe: Timeframe = Timeframe.M5,
    start: datetime = T0,
    pad: object = 0,
) -> list[Bar]:
    """Bars from closes (``open = previous close``, high/low = the body ± ``pad``) or from
    ``(open, high, low, close)`` tuples, ``timeframe`` apart from ``start``."""
    bars: list[Bar] = []
    previous: Decimal | None = None
    for i, row in enumerate(rows):
        if isinstance(row, tuple):
            o, h, low, c = (D(v) for v in row)
        else:
            c = D(row)
            o = previous if previous is not None else c
            h = max(o, c) + D(pad)
            low = min(o, c) - D(pad)
        begin = start + i * timeframe.duration
        bars.append(
            Bar(symbol, exchange, timeframe, begin, begin + timeframe.duration, o, h, low, c, 0)
        )
        previous = c
    return bars


@dataclass(frozen=True, slots=True)
class Trade:
    step: int
    timestamp: datetime
    side: str
    symbol: str
    quantity: int
    price: Decimal

    def row(self) -> tuple[int, str, str, int, Decimal]:
        return (self.step, self.side, self.symbol, self.quantity, self.price)


@dataclass
class FakeMarket:
    """The broker side: prices, orders, fills and positions. Survives a strategy restart."""

    bars: list[Bar]
    option_chains: Mapping[str, Chain] = field(default_factory=dict)
    fail: FailRule | None = None
    steps: list[list[Bar]] = field(init=False)
    step: int = -1
    prices: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    placed_step: dict[str, int] = field(default_factory=dict)
    working: list[str] = field(default_factory=list)
    positions: dict[tuple[str, str, str], Position] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    cancels: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    updates: list[Order] = field(default_factory=list)
    logs: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _ids: int = 0

    def __post_init__(self) -> None:
        ends = sorted({b.end for b in self.bars})
        index = {end: i for i, end in enumerate(ends)}
        self.steps = [[] for _ in ends]
        for bar in self.bars:
            self.steps[index[bar.end]].append(bar)

    # --- time and prices ---------------------------------------------------------------

    def now(self) -> datetime:
        if self.step < 0:
            return self.steps[0][0].start if self.steps else T0
        return self.steps[self.step][0].end

    def advance(self, step: int) -> None:
        self.step = step
        for bar in self.steps[step]:
            self.prices[bar.symbol] = bar.close

    def price(self, symbol: str) -> Decimal:
        try:
            return self.prices[symbol]
        except KeyError:
            raise DomainError(f"no price for {symbol}", ErrorCode.INSTRUMENT_NOT_FOUND) from None

    # --- orders --------------------------------------------------------------------------

    def place(self, request: BrokerOrder, user_id: str, config_id: str) -> Order:
        verdict = self.fail(request) if self.fail else None
        if verdict == "raise":
            raise DomainError("refused by the fake risk check", ErrorCode.RISK_REJECTED)
        self._ids += 1
        order = Order.from_request(f"O{self._ids}", user_id, config_id, request)
        self.orders[order.order_id] = order
        self.placed_step[order.order_id] = self.step
        order.transition(OrderStatus.SUBMITTED)
        if verdict == "reject":
            order.transition(OrderStatus.REJECTED, error_code="RMS", message="rejected (fake)")
            self.rejected.append((self.step, order.order_id))
            self.updates.append(dataclasses.replace(order))
            return dataclasses.replace(order)
        order.transition(OrderStatus.OPEN)
        answer = dataclasses.replace(order)
        last = self.price(order.symbol)
        if order.order_type is OrderType.MARKET:
            self._fill(order, last)
        elif order.order_type is OrderType.LIMIT:
            assert order.price is not None
            marketable = (order.side is OrderSide.BUY and order.price >= last) or (
                order.side is OrderSide.SELL and order.price <= last
            )
            if marketable:
                self._fill(order, order.price)
            else:
                self.working.append(order.order_id)
        else:
            raise DomainError("the fake market takes MARKET and LIMIT orders only")
        return answer

    def cancel(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise DomainError(f"no order {order_id}", ErrorCode.ORDER_NOT_FOUND)
        if order_id not in self.working:
            raise DomainError(f"{order_id} is {order.status}", ErrorCode.ORDER_NOT_CANCELLABLE)
        self.working.remove(order_id)
        order.transition(OrderStatus.CANCELLED)
        self.cancels.append((self.step, order_id))
        self.updates.append(dataclasses.replace(order))
        return dataclasses.replace(order)

    def match(self) -> None:
        bars = {bar.symbol: bar for bar in self.steps[self.step]}
        for order_id in list(self.working):
            order = self.orders[order_id]
            bar = bars.get(order.symbol)
            if bar is None or self.placed_step[order_id] >= self.step:
                continue
            assert order.price is not None
            if (order.side is OrderSide.BUY and bar.low <= order.price) or (
                order.side is OrderSide.SELL and bar.high >= order.price
            ):
                self.working.remove(order_id)
                self._fill(order, order.price)

    def _fill(self, order: Order, price: Decimal) -> None:
        quantity = order.remaining_quantity
        order.apply_fill(quantity, price)
        fill = Fill(
            f"T{len(self.trades) + 1}",
            order.order_id,
            order.symbol,
            order.exchange,
            order.side,
            order.product_type,
            quantity,
            price,
            timestamp=self.now(),
        )
        key = (order.exchange.value, order.symbol, order.product_type.value)
        position = self.positions.setdefault(
            key, Position(order.symbol, order.exchange, order.product_type)
        )
        position.apply(fill)
        self.trades.append(
            Trade(self.step, self.now(), order.side.value, order.symbol, quantity, price)
        )
        self.updates.append(dataclasses.replace(order))

    # --- option chains -------------------------------------------------------------------

    def chain(self, underlying: str, expiry: datetime | None) -> list[OptionQuote]:
        source = self.option_chains.get(underlying)
        if source is None:
            raise DomainError(f"no option chain for {underlying}", ErrorCode.NOT_FOUND)
        rows = list(source(self.now()) if callable(source) else source)
        out = []
        for row in rows:
            if expiry is not None and row.expiry != expiry:
                continue
            live = self.prices.get(row.symbol)
            if live is not None and live != row.ltp:
                shift = live - row.ltp
                row = dataclasses.replace(row, ltp=live, bid=row.bid + shift, ask=row.ask + shift)
            out.append(row)
        return out


class FakeContext:
    """Implements every method of ``StrategyContext`` over a ``FakeMarket``."""

    def __init__(self, market: FakeMarket, state: dict[str, Any] | None = None) -> None:
        self.market = market
        self.strategy_id = "strategy-1"
        self.user_id = "user-1"
        self.config_id = "config-1"
        self.state: dict[str, Any] = state if state is not None else {}

    def now(self) -> datetime:
        return self.market.now()

    async def quote(self, symbol: str, exchange: Exchange | str) -> TickView:
        price = self.market.price(symbol)
        return TickView(symbol, Exchange(exchange), price, price, price, 0, self.now())

    async def bars(
        self, symbol: str, exchange: Exchange | str, timeframe: Timeframe, count: int
    ) -> Sequence[Bar]:
        now = self.now()
        done = [
            b
            for b in self.market.bars
            if b.symbol == symbol
            and b.exchange == Exchange(exchange)
            and b.timeframe == timeframe
            and b.end <= now
        ]
        done.sort(key=lambda b: b.start)
        return done[-count:] if count > 0 else []

    async def option_chain(
        self, underlying: str, expiry: datetime | None = None
    ) -> Sequence[OptionQuote]:
        return self.market.chain(underlying, expiry)

    async def positions(self) -> Sequence[Position]:
        return [dataclasses.replace(p) for p in self.market.positions.values()]

    async def open_orders(self) -> Sequence[Order]:
        return [dataclasses.replace(self.market.orders[i]) for i in self.market.working]

    async def place_order(self, order: BrokerOrder) -> Order:
        return self.market.place(order, self.user_id, self.config_id)

    async def cancel_order(self, order_id: str) -> Order:
        return self.market.cancel(order_id)

    async def log(self, kind: str, data: dict[str, Any]) -> None:
        assert kind in ("signal", "order", "info", "error"), kind
        json.dumps(data)  # the signal log is JSON too
        self.market.logs.append((self.market.step, kind, data))


@dataclass
class Result:
    market: FakeMarket
    state: dict[str, Any]
    strategy: BaseStrategy

    @property
    def trades(self) -> list[tuple[int, str, str, int, Decimal]]:
        return [t.row() for t in self.market.trades]

    @property
    def logs(self) -> list[tuple[int, str, dict[str, Any]]]:
        return self.market.logs

    @property
    def cancels(self) -> list[tuple[int, str]]:
        return self.market.cancels

    def logs_of(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, k, data in self.market.logs if k == kind]

    def order(self, order_id: str) -> Order:
        return self.market.orders[order_id]

    def working_orders(self) -> list[Order]:
        return [self.market.orders[i] for i in self.market.working]


class Driver:
    def __init__(
        self, strategy_cls: type[BaseStrategy], params: StrategyParams, market: FakeMarket
    ) -> None:
        self.strategy_cls = strategy_cls
        self.params = params
        self.market = market
        self.strategy: BaseStrategy | None = None

    async def start(self, state: dict[str, Any] | None = None) -> BaseStrategy:
        ctx = FakeContext(self.market, state)
        self.strategy = self.strategy_cls(ctx, self.params)
        await self.strategy.on_start()
        self._check_state()
        await self.drain()
        self.subscriptions = list(self.strategy.subscriptions())
        return self.strategy

    def _check_state(self) -> None:
        assert self.strategy is not None
        state = self.strategy.ctx.state
        assert json.loads(json.dumps(state)) == state, "state must be plain JSON"

    async def drain(self) -> None:
        assert self.strategy is not None
        while self.market.updates:
            update = self.market.updates.pop(0)
            await self.strategy.on_order_update(update)
            self._check_state()

    def _wanted(self, bar: Bar) -> tuple[bool, bool]:
        for sub in self.subscriptions:
            if sub.symbol == bar.symbol and sub.exchange == bar.exchange:
                return bar.timeframe in sub.timeframes, sub.ticks
        return False, False

    async def step(self, index: int) -> None:
        assert self.strategy is not None
        self.market.advance(index)
        self.market.match()
        await self.drain()
        for bar in self.market.steps[index]:
            wanted, ticks = self._wanted(bar)
            if ticks:
                tick = TickView(
                    bar.symbol, bar.exchange, bar.close, bar.close, bar.close, 0, bar.end
                )
                await self.strategy.on_tick(tick)
                self._check_state()
                await self.drain()
            if wanted:
                await self.strategy.on_bar(bar)
                self._check_state()
                await self.drain()


async def arun(
    strategy_cls: type[BaseStrategy],
    params: StrategyParams | Mapping[str, Any],
    bars_by_symbol: Mapping[str, Sequence[Bar]] | Sequence[Bar],
    option_chains: Mapping[str, Chain] | None = None,
    *,
    fail: FailRule | None = None,
    restart_at: int | None = None,
    stop_after: int | None = None,
) -> Result:
    if not isinstance(params, StrategyParams):
        params = strategy_cls.Params(**params)
    if isinstance(bars_by_symbol, Mapping):
        bars = [b for series in bars_by_symbol.values() for b in series]
    else:
        bars = list(bars_by_symbol)
    market = FakeMarket(bars, option_chains or {}, fail)
    driver = Driver(strategy_cls, params, market)
    strategy = await driver.start()
    last = len(market.steps) if stop_after is None else min(stop_after, len(market.steps))
    for index in range(last):
        if index == restart_at:
            state = json.loads(json.dumps(strategy.ctx.state))
            strategy = await driver.start(state)
        await driver.step(index)
    return Result(market, strategy.ctx.state, strategy)


def run(
    strategy_cls: type[BaseStrategy],
    params: StrategyParams | Mapping[str, Any],
    bars_by_symbol: Mapping[str, Sequence[Bar]] | Sequence[Bar],
    option_chains: Mapping[str, Chain] | None = None,
    *,
    fail: FailRule | None = None,
    restart_at: int | None = None,
    stop_after: int | None = None,
) -> Result:
    """Run ``strategy_cls`` over the bars; see the module docstring for the model."""
    return asyncio.run(
        arun(
            strategy_cls,
            params,
            bars_by_symbol,
            option_chains,
            fail=fail,
            restart_at=restart_at,
            stop_after=stop_after,
        )
    )


def step_of(bars: Sequence[Bar], moment: datetime) -> int:
    """The index of the bar (of one series) that ends at ``moment``."""
    return next(i for i, b in enumerate(bars) if b.end == moment)


__all__ = ["T0", "D", "FakeContext", "FakeMarket", "Result", "Trade", "make_bars", "run"]
