"""What a backtest runs: ``BacktestConfig``, validated once, with errors a caller can show.

Why pydantic: the same model will be the request body of the REST API and the parsed
form of the CLI's options, so a config is checked by one set of rules wherever it comes
from. ``parse_config`` turns pydantic's errors into a ``DomainError(VALIDATION_ERROR)``
whose ``details["errors"]`` lists every bad field, like strategy params do.

The strategy's own params are validated by its ``Params`` model exactly as the live path
validates them (``StrategyService``), when the backtest is built (``engine.Backtest``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trading_backend.brokers.base import BrokerRejected
from trading_backend.brokers.paper.charges import ChargeRates
from trading_backend.brokers.paper.settings import PaperSettings
from trading_backend.domain import DomainError, ErrorCode, Exchange, Timeframe

__all__ = ["BacktestConfig", "parse_config", "parse_instrument"]

DEFAULT_CAPITAL = Decimal("1000000")


def parse_instrument(text: str, default_exchange: Exchange = Exchange.NSE) -> tuple[str, Exchange]:
    """``"NSE:INFY"`` or ``"INFY"`` (on ``default_exchange``) -> ``("INFY", Exchange.NSE)``."""
    raw = str(text).strip()
    exchange_text, _, symbol = raw.rpartition(":")
    symbol = symbol.strip().upper()
    if not symbol or len(symbol) > 64:
        raise ValueError(f"instrument {text!r} needs a symbol of 1 to 64 characters")
    if not exchange_text:
        return symbol, default_exchange
    try:
        return symbol, Exchange(exchange_text.strip().upper())
    except ValueError:
        known = ", ".join(e.value for e in Exchange)
        raise ValueError(
            f"unknown exchange {exchange_text!r} in {text!r} (one of {known})"
        ) from None


class BacktestConfig(BaseModel):
    """One backtest. Every field but ``strategy`` has a default.

    ``symbols`` and ``timeframe`` default to what the strategy subscribes to; given, they
    choose which instruments' bars are replayed (bars of instruments the strategy does not
    subscribe to still move their prices, for strategies that trade or read them).
    ``start``/``end`` bound the bars replayed, ``[start, end)`` by bar start (naive times
    are UTC). Fill model: ``slippage_bps`` (market and triggered stop-market orders),
    ``half_spread_ticks``, ``partial_fills`` with ``participation`` (the share of each
    price point's volume one order may take). Charges: the paper broker's Indian equity
    and F&O table / crypto fees (``charges=False``: none), any rate overridden by
    ``charge_rates``. ``broker_settings``: further paper-account settings
    (``intraday_leverage``, ``margin_fractions``, ``currency``). ``seed``: the randomness
    of the run (the paper market's synthetic history when bars come from the paper
    broker); the replay itself draws nothing, so a config and its data always give the same
    result.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str = Field(min_length=1, description="strategy kind (registry name)")
    params: dict[str, Any] = Field(default_factory=dict)
    symbols: tuple[str, ...] = Field(default=(), description='"EXCHANGE:SYMBOL" or "SYMBOL"')
    timeframe: Timeframe | None = None
    start: datetime | None = None
    end: datetime | None = None
    initial_capital: Decimal = Field(DEFAULT_CAPITAL, gt=0)
    slippage_bps: Decimal = Field(Decimal(0), ge=0, le=10_000)
    half_spread_ticks: int = Field(0, ge=0, le=1_000)
    partial_fills: bool = False
    participation: Decimal = Field(Decimal("0.25"), gt=0, le=1)
    charges: bool = True
    charge_rates: dict[str, Decimal] = Field(default_factory=dict)
    broker_settings: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(42, ge=0)
    risk_free_rate: float = Field(0.0, ge=-1, le=1)

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s for s in value.split(",") if s.strip())
        return value

    @field_validator("symbols")
    @classmethod
    def _symbols_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: list[str] = []
        for text in value:
            symbol, exchange = parse_instrument(text)
            key = f"{exchange.value}:{symbol}"
            if key in seen:
                raise ValueError(f"instrument {key} is listed twice")
            seen.append(key)
        return tuple(seen)

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("charge_rates")
    @classmethod
    def _rates(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        ChargeRates.from_overrides(value)  # unknown names, negative values
        return value

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        overlap = sorted(
            set(self.broker_settings)
            & {"initial_capital", "slippage_bps", "participation", "charges", "seed"}
        )
        if overlap:
            raise ValueError(
                f"broker_settings must not repeat {', '.join(overlap)}: use the config field"
            )
        self.paper_settings()  # raises for bad leverage, margin fractions, currency
        return self

    @property
    def instruments(self) -> list[tuple[str, Exchange]]:
        return [parse_instrument(text) for text in self.symbols]

    def paper_settings(self) -> PaperSettings:
        """The paper account's settings: the same parser as a paper broker config."""
        rates: dict[str, Any]
        if self.charges:
            rates = dict(self.charge_rates)
        else:
            rates = {name: "0" for name in ChargeRates().to_dict()}
        mapping = {
            **self.broker_settings,
            "initial_capital": str(self.initial_capital),
            "slippage_bps": str(self.slippage_bps),
            "participation": str(self.participation),
            "charges": rates,
            "seed": self.seed,
        }
        try:
            return PaperSettings.from_mapping(mapping)
        except BrokerRejected as exc:
            raise ValueError(exc.message) from None


def parse_config(data: BacktestConfig | dict[str, Any]) -> BacktestConfig:
    """A validated config; ``DomainError(VALIDATION_ERROR)`` listing the bad fields."""
    if isinstance(data, BacktestConfig):
        return data
    if not isinstance(data, dict):
        raise DomainError("a backtest config must be a mapping", ErrorCode.VALIDATION_ERROR)
    try:
        return BacktestConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise DomainError(
            f"invalid backtest config: {exc}",
            ErrorCode.VALIDATION_ERROR,
            errors=[{**e, "loc": [str(p) for p in e["loc"]]} for e in errors],
        ) from None


def fill_params(config: dict[str, Any]) -> dict[str, Any]:
    """The strategy's own ``symbol``/``exchange``/``timeframe`` params follow the config's
    ``symbols`` (one instrument) and ``timeframe`` when the params do not give them:
    otherwise a strategy would trade its default instrument while another one is
    replayed. The CLI and the REST API both apply it to what the user wrote."""
    from trading_backend.strategies.registry import StrategyRegistry

    kind, params, symbols = config.get("strategy"), config.get("params"), config.get("symbols")
    if not isinstance(kind, str) or not isinstance(params or {}, dict):
        return config  # parse_config reports what is wrong with them
    try:
        fields = StrategyRegistry().get(kind).Params.model_fields
    except DomainError:
        return config  # the unknown kind is reported by the backtest itself
    params = dict(params or {})
    if not isinstance(symbols, list):
        symbols = []
    if len(symbols) == 1 and "symbol" in fields and "symbol" not in params:
        symbol, exchange = parse_instrument(symbols[0])
        params["symbol"] = symbol
        if "exchange" in fields and "exchange" not in params:
            params["exchange"] = exchange.value
    if config.get("timeframe") and "timeframe" in fields and "timeframe" not in params:
        params["timeframe"] = config["timeframe"]
    return {**config, "params": params}
