"""A Hypothesis state machine over the engine: place / partial fill / fill / cancel /
price move / halt, checked against an independent model of the books.

Invariants:
* the engine's positions and working quantities equal the model's;
* exposure (positions at the last price + reservations, worst case) never exceeds the
  limits: exactly, as long as no price has moved; after price moves, no more than the
  limit scaled by the largest price ratio seen (prices move positions, not acceptances).
  Every acceptance itself leaves exposure within the limit or no higher than before;
* nothing is accepted that opens risk while HALTED (or, while REDUCING, anything but a
  reducing order); a rejection changes nothing; a release restores the books exactly;
* reservations are never negative; cancelling every working order leaves zero reserved.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.risk.helpers import INFY, NOW, OFF, SBIN, TCS, entity, order, submitted
from trading_backend.domain import Instrument, Order, OrderStatus
from trading_backend.risk import RiskEngine, RiskRejected, Scope, TradingState

ACCOUNTS = {"c1": "u1", "c2": "u1", "c3": "u2"}
INSTRUMENTS: dict[str, tuple[Instrument, Decimal]] = {
    "NSE:TCS": (TCS, Decimal("3000")),
    "NSE:INFY": (INFY, Decimal("1500")),
    "NSE:SBIN": (SBIN, Decimal("900")),
}
TICK = Decimal("0.05")
LIMITS = dataclasses.replace(
    OFF,
    max_symbol_exposure=Decimal("200000"),
    max_gross_exposure=Decimal("400000"),
    max_open_orders=12,
    max_open_positions=3,
    price_band_pct=Decimal("5"),
    duplicate_window_seconds=2.0,
    daily_loss_limit=Decimal("400"),
    on_loss_breach=TradingState.REDUCING,
)
C2_LIMITS = dataclasses.replace(
    OFF, max_symbol_exposure=Decimal("100000"), max_gross_exposure=Decimal("150000")
)
SCOPES = ["global", "user:u1", "user:u2", "account:c1", "account:c2", "account:c3"]


class RiskMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.engine = RiskEngine(
            instruments=[i for i, _ in INSTRUMENTS.values()], default_limits=LIMITS
        )
        self.engine.set_limits("u1", "c2", C2_LIMITS)
        self.engine.set_funds("c3", Decimal("150000"))
        self.now = NOW
        self.prices = {key: price for key, (_, price) in INSTRUMENTS.items()}
        self.low = dict(self.prices)
        self.high = dict(self.prices)
        for instrument, price in INSTRUMENTS.values():
            self.engine.on_price(instrument.symbol, instrument.exchange, price, self.now)
        self.pristine = True  # no price has moved yet
        self.orders: dict[str, Order] = {}
        self.positions: dict[tuple[str, str], int] = {}
        self.count = 0

    # -- helpers ---------------------------------------------------------------------

    def tick(self) -> None:
        self.now += timedelta(milliseconds=137)

    def exposures(self) -> dict[tuple[str, str], Decimal]:
        """(scope, what) -> exposure, from the engine's usage report: per account and per
        user, for each instrument and gross."""
        out: dict[tuple[str, str], Decimal] = {}
        for config, user in ACCOUNTS.items():
            usage = self.engine.usage(user, config, now=self.now)
            out[(f"account:{config}", "gross")] = usage["account"]["max_gross_exposure"]["value"]
            out[(f"user:{user}", "gross")] = usage["user"]["max_gross_exposure"]["value"]
            for key, book in usage["symbols"].items():
                out[(f"account:{config}", key)] = book["exposure"]
                name = (f"user:{user}", key)
                out[name] = out.get(name, Decimal(0)) + book["exposure"]
        return out

    @staticmethod
    def limit_for(scope: str, what: str) -> Decimal | None:
        limits = C2_LIMITS if scope == "account:c2" else LIMITS
        if scope.startswith("account:") and scope != "account:c2":
            return None  # no limits of its own: the user's apply
        return limits.max_gross_exposure if what == "gross" else limits.max_symbol_exposure

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.engine.usage(user, config, now=self.now) for config, user in ACCOUNTS.items()]

    def reduces(self, config: str, key: str, sign: int, quantity: int) -> bool:
        position = self.positions.get((config, key), 0)
        if position == 0 or (position > 0) == (sign > 0):
            return False
        pending = sum(
            o.remaining_quantity
            for o in self.orders.values()
            if o.config_id == config and f"NSE:{o.symbol}" == key and o.side.sign == sign
        )
        return quantity + pending <= abs(position)

    # -- rules -----------------------------------------------------------------------

    @rule(
        config=st.sampled_from(sorted(ACCOUNTS)),
        key=st.sampled_from(sorted(INSTRUMENTS)),
        side=st.sampled_from(["BUY", "SELL"]),
        quantity=st.integers(min_value=1, max_value=60),
        product=st.sampled_from(["INTRADAY", "DELIVERY"]),
        offset=st.one_of(st.none(), st.integers(min_value=-3, max_value=3)),
        persist=st.booleans(),
        intentional=st.booleans(),
        square_off=st.booleans(),
    )
    def place(
        self,
        config: str,
        key: str,
        side: str,
        quantity: int,
        product: str,
        offset: int | None,
        persist: bool,
        intentional: bool,
        square_off: bool,
    ) -> None:
        self._place(config, key, side, quantity, product, offset, persist, intentional, square_off)

    @rule(data=st.data(), square_off=st.booleans(), persist=st.booleans())
    def reduce(self, data: st.DataObject, square_off: bool, persist: bool) -> None:
        """Close part of a position (what REDUCING and square-offs allow)."""
        held = sorted(k for k, v in self.positions.items() if v)
        if not held:
            return
        config, key = data.draw(st.sampled_from(held))
        position = self.positions[(config, key)]
        sign = -1 if position > 0 else 1
        room = abs(position) - sum(
            o.remaining_quantity
            for o in self.orders.values()
            if o.config_id == config and f"NSE:{o.symbol}" == key and o.side.sign == sign
        )
        if room <= 0:
            return
        quantity = data.draw(st.integers(min_value=1, max_value=room))
        side = "BUY" if sign > 0 else "SELL"
        self._place(config, key, side, quantity, "INTRADAY", None, persist, True, square_off)

    def _place(
        self,
        config: str,
        key: str,
        side: str,
        quantity: int,
        product: str,
        offset: int | None,
        persist: bool,
        intentional: bool,
        square_off: bool,
    ) -> None:
        self.tick()
        user = ACCOUNTS[config]
        symbol = key.split(":")[1]
        price = None if offset is None else self.prices[key] + TICK * offset
        request = order(side, quantity, price, symbol=symbol, product=product)
        sign = 1 if side == "BUY" else -1
        reducing = self.reduces(config, key, sign, quantity)
        state, _ = self.engine.effective_state(user, config)
        before_exposure = self.exposures()
        before = self.snapshot()
        self.count += 1
        order_id = f"o{self.count}"
        try:
            self.engine.check_and_reserve(
                user,
                config,
                order_id,
                request,
                now=self.now,
                intentional=intentional,
                square_off=square_off,
            )
        except RiskRejected as error:
            event(f"rejected: {error.details['rule']}")
            assert self.snapshot() == before, "a rejection changed the books"
            assert self.engine.open_order(order_id) is None
            return
        event(f"accepted in {state.value}" + (" (square-off)" if square_off else ""))
        if reducing:
            event("accepted a reducing order")
        # Nothing opens risk while HALTED; only reducing orders while REDUCING.
        assert square_off or state is not TradingState.HALTED, "accepted an order while HALTED"
        if square_off or state is not TradingState.ACTIVE:
            assert reducing, f"accepted a non-reducing order in {state} (square_off={square_off})"
        after_exposure = self.exposures()
        for name, value in after_exposure.items():
            limit = self.limit_for(*name)
            if limit is not None and value > limit:
                assert value <= before_exposure.get(name, Decimal(0)), (
                    f"an accepted order raised {name} to {value}, above {limit}"
                )
        if not persist:
            assert self.engine.release(order_id)
            assert self.snapshot() == before, "release did not restore the books"
            return
        self.orders[order_id] = submitted(entity(order_id, user, config, request))
        if price is not None:
            self.high[key] = max(self.high[key], price)
            self.low[key] = min(self.low[key], price)

    def marketable(self) -> list[str]:
        """Working orders that would trade at the last price."""
        out = []
        for order_id, o in self.orders.items():
            last = self.prices[f"NSE:{o.symbol}"]
            if (
                o.price is None
                or (o.side.sign > 0 and o.price >= last)
                or (o.side.sign < 0 and o.price <= last)
            ):
                out.append(order_id)
        return sorted(out)

    def _fill(self, order_id: str, quantity: int) -> None:
        o = self.orders[order_id]
        key = f"NSE:{o.symbol}"
        o.apply_fill(quantity, self.prices[key])
        self.engine.on_order(o, charges=Decimal("0.5") * o.filled_quantity, now=self.now)
        position = (o.config_id, key)
        self.positions[position] = self.positions.get(position, 0) + o.side.sign * quantity
        if o.status.is_final:
            del self.orders[order_id]

    @rule(data=st.data())
    def partial_fill(self, data: st.DataObject) -> None:
        candidates = self.marketable()
        if not candidates:
            return
        order_id = data.draw(st.sampled_from(candidates))
        remaining = self.orders[order_id].remaining_quantity
        if remaining > 1:
            self._fill(order_id, data.draw(st.integers(min_value=1, max_value=remaining - 1)))

    @rule(data=st.data())
    def fill(self, data: st.DataObject) -> None:
        candidates = self.marketable()
        if not candidates:
            return
        order_id = data.draw(st.sampled_from(candidates))
        self._fill(order_id, self.orders[order_id].remaining_quantity)

    @rule(data=st.data(), repeat=st.booleans())
    def cancel(self, data: st.DataObject, repeat: bool) -> None:
        if not self.orders:
            return
        order_id = data.draw(st.sampled_from(sorted(self.orders)))
        o = self.orders.pop(order_id)
        o.transition(OrderStatus.CANCELLED)
        self.engine.on_order(o, now=self.now)
        if repeat:
            self.engine.on_order(o, now=self.now)  # duplicates are idempotent

    @rule(
        key=st.sampled_from(sorted(INSTRUMENTS)),
        ticks=st.integers(min_value=-400, max_value=400),
    )
    def price_move(self, key: str, ticks: int) -> None:
        self.tick()
        price = max(self.prices[key] + TICK * ticks, TICK * 100)
        self.prices[key] = price
        self.high[key] = max(self.high[key], price)
        self.low[key] = min(self.low[key], price)
        if ticks:
            self.pristine = False
        instrument = INSTRUMENTS[key][0]
        for breach in self.engine.on_price(instrument.symbol, instrument.exchange, price, self.now):
            event(f"breach: {breach.rule}")
            assert breach.value > breach.limit
            state = self.engine.state(breach.scope).state
            assert state.strictness >= breach.new_state.strictness

    @rule(
        scope=st.sampled_from(SCOPES),
        state=st.sampled_from(
            [TradingState.ACTIVE] * 4 + [TradingState.REDUCING, TradingState.HALTED]
        ),
    )
    def set_state(self, scope: str, state: TradingState) -> None:
        self.engine.set_state(scope, state, "test")
        assert self.engine.state(Scope.parse(scope)).state is state

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        if not hasattr(self, "engine"):
            return
        for config, user in ACCOUNTS.items():
            symbols = self.engine.usage(user, config, now=self.now)["symbols"]
            for key in INSTRUMENTS:
                book = symbols.get(key, {})
                assert book.get("quantity", 0) == self.positions.get((config, key), 0)
                for side, field in ((1, "open_buy_quantity"), (-1, "open_sell_quantity")):
                    working = sum(
                        o.remaining_quantity
                        for o in self.orders.values()
                        if o.config_id == config
                        and f"NSE:{o.symbol}" == key
                        and o.side.sign == side
                    )
                    assert book.get(field, 0) == working
        assert sorted(self.engine.open_order_ids()) == sorted(self.orders)

    @invariant()
    def reservations_are_never_negative(self) -> None:
        if not hasattr(self, "engine"):
            return
        for usage in self.snapshot():
            assert usage["funds"]["reserved"] >= 0
            for book in usage["symbols"].values():
                assert book["reserved_buy"] >= 0 and book["reserved_sell"] >= 0
                assert book["open_buy_quantity"] >= 0 and book["open_sell_quantity"] >= 0
                assert book["open_orders"] >= 0
        for order_id in self.engine.open_order_ids():
            entry = self.engine.open_order(order_id)
            assert entry is not None and entry.remaining >= 0

    @invariant()
    def exposure_within_limits(self) -> None:
        if not hasattr(self, "engine"):
            return
        ratio = max(self.high[key] / self.low[key] for key in INSTRUMENTS)
        for (scope, what), value in self.exposures().items():
            limit = self.limit_for(scope, what)
            if limit is None:
                continue
            if self.pristine:
                assert value <= limit, f"{scope} {what}: {value} > {limit}"
            else:
                assert value <= limit * ratio, f"{scope} {what}: {value} > {limit} x {ratio}"

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        for order_id in sorted(self.orders):
            o = self.orders.pop(order_id)
            o.transition(OrderStatus.CANCELLED)
            self.engine.on_order(o, now=self.now)
        assert self.engine.open_order_ids() == []
        for usage in self.snapshot():
            assert usage["funds"]["reserved"] == 0
            assert usage["account"]["max_open_orders"]["value"] == 0
            for book in usage["symbols"].values():
                assert book["reserved_buy"] == 0 and book["reserved_sell"] == 0
                assert book["open_buy_quantity"] == 0 and book["open_sell_quantity"] == 0


RiskMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRiskMachine = RiskMachine.TestCase
