"""Angel One's instrument master: normalising every instrument type from crafted rows,
the caps and priorities of the seed's instrument configuration, the refusal of broken
files, and the generator of realistic files."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest

from trading_backend.brokers.angel_one.fake.scrip_master import (
    generate_scrip_master,
    scrip_master_bytes,
    small_scrip_master,
    write_scrip_master,
)
from trading_backend.brokers.angel_one.protocol import SCRIP_MASTER_URL
from trading_backend.brokers.angel_one.scrip_master import (
    InstrumentCaps,
    ScripMasterError,
    fetch_scrip_master,
    normalise_rows,
    parse_expiry,
    parse_scrip_master,
    select_instruments,
    to_instrument,
)
from trading_backend.brokers.paper.universe import default_universe, nifty50_equities
from trading_backend.domain import Exchange, Instrument, InstrumentType
from trading_backend.settings import Settings

TODAY = date(2024, 3, 1)


def row(
    symbol: str,
    token: str,
    *,
    name: str = "",
    kind: str = "",
    exch: str = "NSE",
    expiry: str = "",
    strike: str = "-1.000000",
    lot: str = "1",
    tick: str = "5.000000",
) -> dict[str, str]:
    return {
        "token": token,
        "symbol": symbol,
        "name": name or symbol.split("-")[0],
        "expiry": expiry,
        "strike": strike,
        "lotsize": lot,
        "instrumenttype": kind,
        "exch_seg": exch,
        "tick_size": tick,
    }


def one(raw: dict[str, Any], today: date = TODAY) -> Instrument:
    result = normalise_rows([raw], today=today)
    assert result.skipped == Counter(), result.skipped
    (record,) = result.rows
    return to_instrument(record)


def skipped(raw: Any, today: date = TODAY) -> Counter[str]:
    result = normalise_rows([raw], today=today)
    assert result.rows == []
    return result.skipped


# -- normalising each instrument type -----------------------------------------------------
def test_nse_equity_drops_the_eq_series_and_keeps_the_broker_symbol() -> None:
    sbin = one(row("SBIN-EQ", "3045", name="SBIN"))
    assert (sbin.symbol, sbin.exchange, sbin.instrument_type) == ("SBIN", Exchange.NSE, "EQ")
    assert (sbin.broker_symbol, sbin.token, sbin.name) == ("SBIN-EQ", "3045", "SBIN")
    assert sbin.tick_size == Decimal("0.05") and sbin.lot_size == 1
    assert sbin.expiry is None and sbin.strike is None and sbin.underlying is None


def test_other_series_keep_their_suffix_and_bse_symbols_stay() -> None:
    be = one(row("XYZ-BE", "9999", name="XYZ", tick="1.000000"))
    assert be.symbol == "XYZ-BE" and be.broker_symbol == "XYZ-BE"
    assert be.tick_size == Decimal("0.01")
    bse = one(row("SBIN", "500112", exch="BSE"))
    assert (bse.symbol, bse.exchange, bse.token) == ("SBIN", Exchange.BSE, "500112")


def test_equity_symbols_agree_with_the_paper_universe() -> None:
    for spec in nifty50_equities()[:10]:
        name = spec.instrument.symbol
        assert one(row(f"{name}-EQ", "1", name=name)).key == spec.instrument.key


@pytest.mark.parametrize(
    ("display", "ours"),
    [
        ("Nifty 50", "NIFTY"),
        ("Nifty Bank", "BANKNIFTY"),
        ("Nifty Fin Service", "FINNIFTY"),
        ("NIFTY MID SELECT", "MIDCPNIFTY"),
        ("India VIX", "INDIAVIX"),
        ("Nifty IT", "NIFTYIT"),
        ("Nifty Midcap 100", "NIFTYMIDCAP100"),
    ],
)
def test_indices_get_short_names(display: str, ours: str) -> None:
    index = one(
        row(display, "99926000", name="NIFTY", kind="AMXIDX", strike="0.000000", tick="0.000000")
    )
    assert (index.symbol, index.instrument_type, index.name) == (ours, "INDEX", display)
    assert index.broker_symbol == display and not index.tradable
    assert index.tick_size == Decimal("0.05")  # "0.000000" in the file: a usable default


def test_index_names_agree_with_the_paper_universe() -> None:
    paper = {
        s.instrument.name: s.instrument.key
        for s in default_universe(TODAY)
        if s.instrument.instrument_type is InstrumentType.INDEX
    }
    for display, key in paper.items():
        assert one(row(display, "1", kind="AMXIDX", tick="0.000000")).key == key


def test_futures_keep_angel_symbols() -> None:
    fut = one(
        row(
            "NIFTY28MAR24FUT",
            "35003",
            name="NIFTY",
            kind="FUTIDX",
            exch="NFO",
            expiry="28MAR2024",
            lot="50",
        )
    )
    assert (fut.symbol, fut.broker_symbol, fut.instrument_type) == (
        "NIFTY28MAR24FUT",
        "NIFTY28MAR24FUT",
        "FUT",
    )
    assert fut.expiry == date(2024, 3, 28) and fut.strike is None
    assert fut.lot_size == 50 and fut.underlying == "NIFTY" and fut.exchange is Exchange.NFO
    stock = one(
        row("SBIN28MAR24FUT", "1", name="SBIN", kind="FUTSTK", exch="NFO", expiry="28MAR2024")
    )
    assert stock.instrument_type is InstrumentType.FUT and stock.underlying == "SBIN"


def test_options_scale_the_strike_and_read_the_right_from_the_symbol() -> None:
    call = one(
        row(
            "NIFTY07MAR2422500CE",
            "40001",
            name="NIFTY",
            kind="OPTIDX",
            exch="NFO",
            expiry="07MAR2024",
            strike="2250000.000000",
            lot="50",
        )
    )
    assert call.instrument_type is InstrumentType.CE and call.strike == Decimal("22500")
    assert str(call.strike) == "22500"  # no exponent notation
    put = one(
        row(
            "IDEA28MAR2412.5PE",
            "40002",
            name="IDEA",
            kind="OPTSTK",
            exch="NFO",
            expiry="28MAR2024",
            strike="1250.000000",
        )
    )
    assert put.instrument_type is InstrumentType.PE and put.strike == Decimal("12.5")


def test_currency_options_are_scaled_by_ten_million_and_ticks_are_paise() -> None:
    option = one(
        row(
            "USDINR28MAR2483.25CE",
            "1126",
            name="USDINR",
            kind="OPTCUR",
            exch="CDS",
            expiry="28MAR2024",
            strike="832500000.000000",
            tick="0.250000",
        )
    )
    assert option.strike == Decimal("83.25") and option.tick_size == Decimal("0.0025")
    future = one(
        row(
            "USDINR26MAR24FUT",
            "1100",
            name="USDINR",
            kind="FUTCUR",
            exch="CDS",
            expiry="26MAR2024",
            tick="0.250000",
        )
    )
    assert future.instrument_type is InstrumentType.FUT and future.exchange is Exchange.CDS


def test_commodities_on_mcx_and_ncdex() -> None:
    crude = one(
        row(
            "CRUDEOIL19MAR24FUT",
            "420000",
            name="CRUDEOIL",
            kind="FUTCOM",
            exch="MCX",
            expiry="19MAR2024",
            lot="100",
            tick="100.000000",
        )
    )
    assert crude.tick_size == Decimal("1") and crude.lot_size == 100
    option = one(
        row(
            "CRUDEOIL15MAR246500CE",
            "420001",
            name="CRUDEOIL",
            kind="OPTFUT",
            exch="MCX",
            expiry="15MAR2024",
            strike="650000.000000",
        )
    )
    assert option.instrument_type is InstrumentType.CE and option.strike == Decimal("6500")
    agri = one(row("DHANIYA20MAR24FUT", "60000", kind="FUTCOM", exch="NCDEX", expiry="20MAR2024"))
    assert agri.exchange is Exchange.NCDEX


@pytest.mark.parametrize("spelling", ["28MAR2024", "28mar2024", "28Mar2024", "28-Mar-2024"])
def test_expiry_parsing_ignores_letter_case(spelling: str) -> None:
    assert parse_expiry(spelling) == date(2024, 3, 28)


def test_docs_segment_names_are_understood() -> None:
    assert one(row("SBIN-EQ", "3045", exch="nse_cm")).exchange is Exchange.NSE
    fut = one(row("X28MAR24FUT", "5", kind="FUTSTK", exch="nse_fo", expiry="28MAR2024"))
    assert fut.exchange is Exchange.NFO


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not a dict", "row is not an object"),
        ({"token": "1"}, "missing field symbol"),
        (row("X-EQ", ""), "empty token"),
        (row("X-EQ", "1", exch="LSE"), "unknown exch_seg 'LSE'"),
        (row("X", "1", kind="UNDCUR", exch="CDS"), "unsupported instrumenttype UNDCUR"),
        (row("X", "1", exch="NFO"), "no instrumenttype on NFO"),
        (row("X28MAR24FUT", "1", kind="FUTSTK", exch="NFO"), "derivative without expiry"),
        (
            row("X28MAR24FUT", "1", kind="FUTSTK", exch="NFO", expiry="31FOO2024"),
            "bad expiry",
        ),
        (
            row("X29FEB24FUT", "1", kind="FUTSTK", exch="NFO", expiry="29FEB2024"),
            "expired contract",
        ),
        (
            row("X28MAR24100XX", "1", kind="OPTSTK", exch="NFO", expiry="28MAR2024"),
            "option symbol without CE/PE suffix",
        ),
        (
            row("X28MAR24100CE", "1", kind="OPTSTK", exch="NFO", expiry="28MAR2024"),
            "option without a positive strike",
        ),
        (
            row("X28MAR24100CE", "1", kind="OPTSTK", exch="NFO", expiry="28MAR2024", strike="x"),
            "bad strike",
        ),
        (row("X-EQ", "1", tick="abc"), "bad tick_size"),
        (row("X-EQ", "1", tick="NaN"), "bad tick_size"),
        (row("X-EQ", "1", lot="many"), "bad lotsize"),
        (row("X-EQ", "1", lot="0"), "equity without a positive tick or lot"),
        ({**row("X-EQ", "1"), "token": ["1"]}, "non-string token or symbol"),
    ],
)
def test_unusable_rows_are_counted_by_reason(raw: Any, reason: str) -> None:
    assert skipped(raw) == Counter({reason: 1})


def test_duplicates_keep_the_first_and_a_bad_row_never_stops_the_rest() -> None:
    rows = [
        row("SBIN-EQ", "3045"),
        {"broken": True},
        row("SBIN-EQ", "9999"),  # same symbol
        row("OTHER-EQ", "3045"),  # same token
        row("SBIN", "3045", exch="BSE"),  # another exchange: fine
        row("RELIANCE-EQ", "2885"),
    ]
    result = normalise_rows(rows, today=TODAY)
    assert [(r[0].value, r[1], r[3]) for r in result.rows] == [
        ("NSE", "SBIN", "3045"),
        ("BSE", "SBIN", "3045"),
        ("NSE", "RELIANCE", "2885"),
    ]
    assert result.rows_read == 6 and result.skipped_total == 3
    assert result.skipped == Counter(
        {"missing field token": 1, "duplicate symbol": 1, "duplicate token": 1}
    )


def test_progress_is_reported_while_parsing() -> None:
    calls: list[tuple[str, int, int | None]] = []
    rows = [row(f"S{i}-EQ", str(i)) for i in range(25_000)]
    normalise_rows(rows, today=TODAY, progress=lambda *a: calls.append(a))
    assert calls == [
        ("parse", 10_000, 25_000),
        ("parse", 20_000, 25_000),
        ("parse", 25_000, 25_000),
    ]


# -- whole files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [b"", b'[{"token": "1", "symbol": "SBIN-EQ"', b"<html>503</html>", b'{"data": []}', b"\xff"],
)
def test_a_body_that_is_not_a_json_array_is_refused(body: bytes) -> None:
    with pytest.raises(ScripMasterError) as info:
        parse_scrip_master(body)
    assert info.value.code.value == "VALIDATION_ERROR"


async def test_download_refuses_errors_and_short_bodies() -> None:
    payload = scrip_master_bytes(small_scrip_master(TODAY))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("missing.json"):
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=payload)

    transport = httpx.MockTransport(handler)
    seen: list[int] = []
    data = await fetch_scrip_master(
        SCRIP_MASTER_URL, transport=transport, progress=lambda _p, done, _t: seen.append(done)
    )
    assert data == payload and seen[-1] == len(payload)
    with pytest.raises(ScripMasterError, match="HTTP 404"):
        await fetch_scrip_master("http://x/missing.json", transport=transport)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ScripMasterError, match="download failed") as info:
        await fetch_scrip_master("http://x/f.json", transport=httpx.MockTransport(broken))
    assert info.value.code.value == "BROKER_UNAVAILABLE"


# -- caps and priorities ------------------------------------------------------------------
def _mixed_rows() -> list[dict[str, str]]:
    rows = [
        row("Nifty 50", "99926000", kind="AMXIDX", tick="0.000000"),
        row("Nifty Bank", "99926009", kind="AMXIDX", tick="0.000000"),
        row("AAA-EQ", "1"),
        row("ZZZ-EQ", "2"),
        row("ABC-BE", "3"),
        row("TCS-EQ", "11536"),
        row("RELIANCE-EQ", "2885"),
        row("SBIN", "500112", exch="BSE"),
        row("AAA", "500001", exch="BSE"),
    ]
    derivatives = [
        ("SBIN28MAR24FUT", "SBIN", "FUTSTK", "28MAR2024", "-1"),
        ("AAA25APR24FUT", "AAA", "FUTSTK", "25APR2024", "-1"),
        ("FINNIFTY26MAR24FUT", "FINNIFTY", "FUTIDX", "26MAR2024", "-1"),
        ("BANKNIFTY27MAR24FUT", "BANKNIFTY", "FUTIDX", "27MAR2024", "-1"),
        ("NIFTY25APR24FUT", "NIFTY", "FUTIDX", "25APR2024", "-1"),
        ("NIFTY28MAR24FUT", "NIFTY", "FUTIDX", "28MAR2024", "-1"),
        ("CRUDEOIL19MAR24FUT", "CRUDEOIL", "FUTCOM", "19MAR2024", "-1"),
        ("SBIN28MAR24800CE", "SBIN", "OPTSTK", "28MAR2024", "80000"),
        ("NIFTY07MAR2421000CE", "NIFTY", "OPTIDX", "07MAR2024", "2100000"),
        ("NIFTY07MAR2422000CE", "NIFTY", "OPTIDX", "07MAR2024", "2200000"),
        ("NIFTY07MAR2423000CE", "NIFTY", "OPTIDX", "07MAR2024", "2300000"),
        ("NIFTY14MAR2422000PE", "NIFTY", "OPTIDX", "14MAR2024", "2200000"),
        ("FINNIFTY05MAR2421000CE", "FINNIFTY", "OPTIDX", "05MAR2024", "2100000"),
    ]
    for i, (symbol, name, kind, expiry, strike) in enumerate(derivatives):
        exch = "MCX" if kind == "FUTCOM" else "NFO"
        rows.append(
            row(symbol, str(50000 + i), name=name, kind=kind, exch=exch, expiry=expiry,
                strike=f"{strike}.000000")
        )  # fmt: skip
    return rows


def _select(caps: InstrumentCaps) -> tuple[list[str], Any]:
    normalised = normalise_rows(_mixed_rows(), today=TODAY)
    selection = select_instruments(normalised.rows, caps)
    return [f"{i.exchange.value}:{i.symbol}" for i in selection.instruments()], selection


def test_equities_nifty50_first_then_alphabetical_nse_before_bse() -> None:
    keys, selection = _select(InstrumentCaps(max_equity=100, max_derivatives=0))
    assert keys == [
        "NSE:NIFTY",
        "NSE:BANKNIFTY",  # indices always kept, outside the caps
        "NSE:RELIANCE",
        "NSE:TCS",
        "BSE:SBIN",  # the Nifty 50 first (NSE, then BSE)
        "NSE:AAA",
        "NSE:ABC-BE",  # then alphabetically, NSE first
        "NSE:ZZZ",
        "BSE:AAA",
    ]
    assert selection.kept == {"index": 2, "equity": 7}
    assert selection.dropped == {
        "index_future": 4,
        "stock_future": 2,
        "other_future": 1,
        "index_option": 5,
        "stock_option": 1,
    }


def test_equity_cap_keeps_the_nifty50_ones() -> None:
    keys, selection = _select(InstrumentCaps(max_equity=3, max_derivatives=0))
    assert keys[2:] == ["NSE:RELIANCE", "NSE:TCS", "BSE:SBIN"]
    assert selection.dropped["equity"] == 4


def test_derivatives_index_futures_then_stock_futures_then_options() -> None:
    keys, _ = _select(InstrumentCaps(max_equity=0, max_derivatives=100))
    derivatives = keys[2:]
    assert derivatives == [
        # NIFTY / BANKNIFTY index futures, nearest expiry first
        "NFO:BANKNIFTY27MAR24FUT",
        "NFO:NIFTY28MAR24FUT",
        "NFO:NIFTY25APR24FUT",
        # other index futures
        "NFO:FINNIFTY26MAR24FUT",
        # stock futures
        "NFO:SBIN28MAR24FUT",
        "NFO:AAA25APR24FUT",
        # commodity / currency futures
        "MCX:CRUDEOIL19MAR24FUT",
        # NIFTY / BANKNIFTY options: nearest expiry, the middle of the chain first
        "NFO:NIFTY07MAR2422000CE",
        "NFO:NIFTY07MAR2421000CE",
        "NFO:NIFTY07MAR2423000CE",
        "NFO:NIFTY14MAR2422000PE",
        # other index options, then stock options
        "NFO:FINNIFTY05MAR2421000CE",
        "NFO:SBIN28MAR24800CE",
    ]
    capped, selection = _select(InstrumentCaps(max_equity=0, max_derivatives=4))
    assert capped[2:] == derivatives[:4]
    assert selection.kept == {"index": 2, "index_future": 4}


def test_load_all_keeps_everything_up_to_the_total_cap() -> None:
    keys, selection = _select(InstrumentCaps(max_equity=1, max_derivatives=1, load_all=True))
    assert len(keys) == 22 and selection.dropped == {}
    capped, selection = _select(
        InstrumentCaps(max_equity=1, max_derivatives=1, load_all=True, max_total=5)
    )
    assert capped == ["NSE:NIFTY", "NSE:BANKNIFTY", "NSE:RELIANCE", "NSE:TCS", "BSE:SBIN"]
    assert selection.kept == {"index": 2, "equity": 3}


def test_caps_come_from_the_seed_settings() -> None:
    settings = Settings(_env_file=None)
    caps = InstrumentCaps.from_settings(settings)
    assert caps == InstrumentCaps(
        max_equity=1000, max_derivatives=500, load_all=False, max_total=150_000
    )
    assert InstrumentCaps.from_settings(settings, load_all=True).load_all
    assert settings.angel_one_scrip_master_url == SCRIP_MASTER_URL


# -- the generator ------------------------------------------------------------------------
def test_generated_files_are_deterministic_and_in_the_real_format(tmp_path: Any) -> None:
    rows = generate_scrip_master(3000, seed=1, today=TODAY)
    assert rows == generate_scrip_master(3000, seed=1, today=TODAY)
    assert len(rows) == 3000
    fields = {"token", "symbol", "name", "expiry", "strike", "lotsize", "instrumenttype",
              "exch_seg", "tick_size"}  # fmt: skip
    assert all(set(r) == fields and all(isinstance(v, str) for v in r.values()) for r in rows)
    segments = Counter(r["exch_seg"] for r in rows)
    assert set(segments) == {"NSE", "BSE", "NFO", "BFO", "MCX", "CDS", "NCDEX"}
    kinds = {r["instrumenttype"] for r in rows}
    assert {"", "AMXIDX", "FUTIDX", "FUTSTK", "OPTIDX", "OPTSTK", "FUTCOM", "OPTFUT",
            "FUTCUR", "OPTCUR", "FUTIRC"} <= kinds  # fmt: skip
    by_symbol = {(r["exch_seg"], r["symbol"]): r for r in rows}
    assert by_symbol["NSE", "SBIN-EQ"]["token"] == "3045"
    assert by_symbol["NSE", "Nifty 50"]["token"] == "99926000"
    assert by_symbol["NSE", "Nifty Bank"]["token"] == "99926009"
    # every row normalises, and the file round-trips through JSON
    path = tmp_path / "OpenAPIScripMaster.json"
    write_scrip_master(path, rows)
    result = normalise_rows(parse_scrip_master(path.read_bytes()), today=TODAY)
    assert result.skipped == Counter() and len(result.rows) == 3000
    options = [to_instrument(r) for r in result.rows if r[2] in (InstrumentType.CE, "PE")]
    nifty = [o for o in options if o.underlying == "NIFTY" and o.expiry is not None]
    assert nifty and all(o.symbol.startswith("NIFTY") for o in nifty)
    sample = nifty[0]
    assert sample.symbol == (
        f"NIFTY{sample.expiry:%d}{sample.expiry:%b}".upper()
        + f"{sample.expiry:%y}{sample.strike}{sample.instrument_type.value}"
    )


def test_the_small_file_has_the_instruments_tests_need() -> None:
    rows = small_scrip_master(TODAY)
    keys = {(r["exch_seg"], r["symbol"]) for r in rows}
    assert {("NSE", "Nifty 50"), ("NSE", "SBIN-EQ"), ("NSE", "RELIANCE-EQ")} <= keys
    assert any(r["instrumenttype"] == "FUTIDX" and r["name"] == "NIFTY" for r in rows)
    assert sum(r["instrumenttype"] == "OPTIDX" and r["name"] == "NIFTY" for r in rows) >= 20
    assert any(r["exch_seg"] == "MCX" for r in rows)
    assert json.loads(scrip_master_bytes(rows)) == rows
