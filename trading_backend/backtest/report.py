"""A backtest's HTML report: one self-contained file, charts drawn here as inline SVG.

Why no charting library: the report must open anywhere (mailed, archived, offline) and
the repository carries no third-party front-end code, so the few charts it needs (equity
curve, drawdown, each instrument's closes with the fills marked) are polylines computed
here. Every text that reaches the page (strategy name, symbols, params, errors) passes
through ``html.escape``: a strategy name or symbol is user input.

``render_report(result, bars)`` returns the page; ``write_report(path, result, bars)``
writes it. ``bars`` maps ``"EXCHANGE:SYMBOL"`` to the bars replayed (``Backtest.series``
after ``run()``), for the price charts; without it only the curve charts are drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any

from trading_backend.backtest.result import BacktestResult
from trading_backend.domain import Bar, OrderSide

__all__ = ["render_report", "write_report"]

WIDTH, HEIGHT, PAD = 960, 260, 48
MAX_POINTS = 1_500  # per line: enough for the eye, small enough for the file
MAX_TRADES_LISTED = 2_000


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _pick(n: int, max_points: int = MAX_POINTS) -> list[int]:
    """Evenly spread indices, first and last kept."""
    if n <= max_points:
        return list(range(n))
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)})


class _Scale:
    """Maps times and values into the chart box (floats only for drawing)."""

    def __init__(self, times: Sequence[datetime], values: Sequence[float]) -> None:
        self.t0 = times[0].timestamp() if times else 0.0
        t1 = times[-1].timestamp() if times else 1.0
        self.dt = (t1 - self.t0) or 1.0
        self.lo = min(values) if values else 0.0
        hi = max(values) if values else 1.0
        self.dv = (hi - self.lo) or 1.0
        self.hi = hi

    def x(self, at: datetime) -> float:
        return PAD + (at.timestamp() - self.t0) / self.dt * (WIDTH - 2 * PAD)

    def y(self, value: float) -> float:
        return HEIGHT - PAD + -(value - self.lo) / self.dv * (HEIGHT - 2 * PAD)


def _axes(scale: _Scale, first: datetime, last: datetime, fmt: str) -> str:
    bottom = HEIGHT - PAD
    return (
        f'<line x1="{PAD}" y1="{bottom}" x2="{WIDTH - PAD}" y2="{bottom}" class="axis"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{bottom}" class="axis"/>'
        f'<text x="{PAD}" y="{bottom + 16}" class="lbl">{_e(first.date())}</text>'
        f'<text x="{WIDTH - PAD}" y="{bottom + 16}" class="lbl" text-anchor="end">'
        f"{_e(last.date())}</text>"
        f'<text x="{PAD - 4}" y="{PAD + 4}" class="lbl" text-anchor="end">{fmt.format(scale.hi)}'
        f'</text><text x="{PAD - 4}" y="{bottom}" class="lbl" text-anchor="end">'
        f"{fmt.format(scale.lo)}</text>"
    )


def _svg(chart_id: str, title: str, body: str) -> str:
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg id="{_e(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{_e(title)}">'
        f"{body}</svg></figure>"
    )


def _line(scale: _Scale, times: Sequence[datetime], values: Sequence[float], css: str) -> str:
    points = " ".join(
        f"{scale.x(t):.1f},{scale.y(v):.1f}" for t, v in zip(times, values, strict=True)
    )
    return f'<polyline class="{css}" points="{points}"/>'


def equity_svg(result: BacktestResult) -> str:
    idx = _pick(len(result.equity_times))
    times = [result.equity_times[i] for i in idx]
    values = [float(result.equity_values[i]) for i in idx]
    if len(times) < 2:
        return _svg("equity", "Equity", "")
    scale = _Scale(times, values)
    return _svg(
        "equity",
        "Equity",
        _axes(scale, times[0], times[-1], "{:,.0f}") + _line(scale, times, values, "equity"),
    )


def drawdowns(values: Sequence[Decimal]) -> list[float]:
    """Each point's fall from the running peak, a fraction <= 0."""
    out: list[float] = []
    peak: Decimal | None = None
    for value in values:
        peak = value if peak is None or value > peak else peak
        out.append(float(value / peak - 1) if peak > 0 else 0.0)
    return out


def drawdown_svg(result: BacktestResult) -> str:
    depth = drawdowns(result.equity_values)  # over every point, then thinned for drawing
    idx = _pick(len(depth))
    times = [result.equity_times[i] for i in idx]
    values = [
        min(depth[i : (idx[k + 1] if k + 1 < len(idx) else i + 1)]) for k, i in enumerate(idx)
    ]
    if len(times) < 2:
        return _svg("drawdown", "Drawdown", "")
    scale = _Scale(times, [*values, 0.0])
    top = scale.y(0.0)
    area = (
        f"{scale.x(times[0]):.1f},{top:.1f} "
        + " ".join(f"{scale.x(t):.1f},{scale.y(v):.1f}" for t, v in zip(times, values, strict=True))
        + f" {scale.x(times[-1]):.1f},{top:.1f}"
    )
    return _svg(
        "drawdown",
        "Drawdown",
        _axes(scale, times[0], times[-1], "{:.1%}") + f'<polygon class="dd" points="{area}"/>',
    )


def price_svg(key: str, bars: Sequence[Bar], result: BacktestResult, index: int) -> str:
    """Closes of one instrument, a triangle at each fill (up: buy, down: sell)."""
    title = f"{key} price and fills"
    if len(bars) < 2:
        return _svg(f"price-{index}", title, "")
    idx = _pick(len(bars))
    times = [bars[i].end for i in idx]
    closes = [float(bars[i].close) for i in idx]
    fills = [f for f in result.fills if f"{f.exchange.value}:{f.symbol}" == key]
    scale = _Scale(times, [*closes, *(float(f.price) for f in fills)])
    marks: list[str] = []
    for fill in fills:
        x, y = scale.x(fill.timestamp), scale.y(float(fill.price))
        buy = fill.side is OrderSide.BUY
        shape = (
            f"{x:.1f},{y - 1:.1f} {x - 5:.1f},{y + 8:.1f} {x + 5:.1f},{y + 8:.1f}"
            if buy
            else f"{x:.1f},{y + 1:.1f} {x - 5:.1f},{y - 8:.1f} {x + 5:.1f},{y - 8:.1f}"
        )
        tip = f"{fill.side.value} {fill.quantity} @ {fill.price} {fill.timestamp.isoformat()}"
        marks.append(
            f'<polygon class="{"buy" if buy else "sell"}" points="{shape}">'
            f"<title>{_e(tip)}</title></polygon>"
        )
    body = (
        _axes(scale, times[0], times[-1], "{:,.2f}")
        + _line(scale, times, closes, "price")
        + "".join(marks)
    )
    return _svg(f"price-{index}", title, body)


def _table(rows: Sequence[tuple[str, object]], css: str = "kv") -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_shown(v))}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{cells}</table>'


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _trades(result: BacktestResult) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("time", "instrument", "side", "qty", "price", "charges")
    )
    head = f"<tr>{head}</tr>"
    rows = "".join(
        f'<tr class="{_e(f.side.value.lower())}"><td>{_e(f.timestamp.isoformat())}</td>'
        f"<td>{_e(f.exchange.value)}:{_e(f.symbol)}</td><td>{_e(f.side.value)}</td>"
        f"<td>{f.quantity}</td><td>{_e(f.price)}</td><td>{_e(f.charges)}</td></tr>"
        for f in result.fills[:MAX_TRADES_LISTED]
    )
    more = len(result.fills) - MAX_TRADES_LISTED
    note = f"<p>... and {more} more fills (see --json).</p>" if more > 0 else ""
    return f'<table class="trades">{head}{rows}</table>{note}'


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}th,td{padding:.2rem .6rem;text-align:left;
border-bottom:1px solid #eee}table.kv th{color:#555;font-weight:normal}
figure{margin:1rem 0}figcaption{font-weight:600;margin-bottom:.3rem}
svg{background:#fcfcfc;border:1px solid #ddd}.axis{stroke:#999}.lbl{font-size:11px;fill:#666}
polyline{fill:none;stroke-width:1.4}.equity{stroke:#1f6feb}.price{stroke:#444}
.dd{fill:#e5534b55;stroke:#e5534b}.buy{fill:#2da44e}.sell{fill:#cf222e}
.error{color:#cf222e;font-weight:600}.grid{display:flex;gap:3rem;flex-wrap:wrap}
"""


def render_report(result: BacktestResult, bars: Mapping[str, Sequence[Bar]] | None = None) -> str:
    """The whole report page."""
    cfg = result.config
    title = f"Backtest: {cfg.strategy} on {', '.join(result.instruments)}"
    metrics = result.metrics.to_dict() if result.metrics is not None else {}
    summary: list[tuple[str, object]] = [
        ("strategy", cfg.strategy),
        ("instruments", ", ".join(result.instruments)),
        ("timeframe", result.timeframe.value),
        ("from", result.equity_times[0].isoformat() if result.equity_times else None),
        ("to", result.equity_times[-1].isoformat() if result.equity_times else None),
        ("bars", result.bars_processed),
        ("initial capital", result.initial_capital),
        ("final equity", result.final_equity),
        ("total charges", result.total_charges),
        ("fills", len(result.fills)),
    ]
    config = cfg.model_dump(mode="json")
    params = config.pop("params", {})
    charts = [equity_svg(result), drawdown_svg(result)]
    for i, key in enumerate(result.instruments):
        series = (bars or {}).get(key)
        if series:
            charts.append(price_svg(key, series, result, i))
    error = f'<p class="error">The strategy failed: {_e(result.error)}</p>' if result.error else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>{error}"
        f'<div class="grid"><section><h2>Summary</h2>{_table(summary)}</section>'
        f'<section id="metrics"><h2>Metrics</h2>{_table(list(metrics.items()))}</section></div>'
        f"<h2>Charts</h2>{''.join(charts)}"
        f"<h2>Parameters</h2>{_table(list(params.items()))}"
        f"<h2>Configuration</h2>{_table(list(config.items()))}"
        f'<h2 id="trades">Trades ({len(result.fills)} fills)</h2>{_trades(result)}'
        "</body></html>"
    )


def write_report(
    path: str | Path, result: BacktestResult, bars: Mapping[str, Sequence[Bar]] | None = None
) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(result, bars), encoding="utf-8")
    return target


def series_by_key(series: Sequence[Sequence[Bar]], keys: Sequence[str]) -> dict[str, Any]:
    """``Backtest.series`` (slot order) keyed like ``result.instruments``."""
    return dict(zip(keys, series, strict=False))
