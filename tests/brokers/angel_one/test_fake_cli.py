"""The development entry point ``python -m trading_backend.brokers.angel_one.fake``."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest

from trading_backend.brokers.angel_one.fake.__main__ import build_parser, parse_client


def test_client_spec_parses_with_optional_cash() -> None:
    assert parse_client("A1:1234:JBSWY3DPEHPK3PXP:key") == (
        "A1",
        "1234",
        "JBSWY3DPEHPK3PXP",
        "key",
        Decimal("1000000"),
    )
    assert parse_client("A1:1234:S:key:2500.50")[4] == Decimal("2500.50")


@pytest.mark.parametrize("spec", ["A1:1234:S", "A1::S:key", "A1:1:S:k:lots", "a:b:c:d:e:f"])
def test_bad_client_spec_is_refused_without_echoing_secrets(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse_client(spec)
    assert spec not in str(refused.value)


def test_parser_defaults_and_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--port", "0", "--client", "A1:1:S:k", "--no-rate-limit"])
    assert args.port == 0 and args.host == "127.0.0.1" and args.no_rate_limit is True
    assert args.client == [("A1", "1", "S", "k", Decimal("1000000"))]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--host", "--port", "--client", "--seed", "--scrip-master", "--no-rate-limit"):
        assert flag in text
