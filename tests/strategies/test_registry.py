"""The strategy registry: built-ins, entry points, a directory of files, kinds and errors."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tests.strategies.toys import BuyThenSell, FailsOnBar
from trading_backend.domain import DomainError, ErrorCode
from trading_backend.strategies import registry as registry_module
from trading_backend.strategies.base import BaseStrategy
from trading_backend.strategies.registry import ENTRY_POINT_GROUP, StrategyRegistry


class FromEntryPoint(BaseStrategy):
    name = "ignored_the_entry_point_name_wins"
    description = "Declared by an outside package"
    category = "crypto"


def _entry_points(*eps: EntryPoint):  # type: ignore[no-untyped-def]
    def fake(*, group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return list(eps)

    return fake


def test_register_and_kinds() -> None:
    registry = StrategyRegistry(include_builtins=False)
    registry.register(BuyThenSell)
    registry.register(FailsOnBar)
    registry.register(BuyThenSell)  # the same class again is harmless
    assert registry.get("buy_then_sell") is BuyThenSell
    assert registry.names() == ["buy_then_sell", "fails_on_bar"]
    [kind, _] = registry.kinds()
    assert kind["name"] == "buy_then_sell"
    assert kind["description"] == "Buy on the first bar, sell on the third"
    assert kind["category"] == "equity"
    schema = kind["params_schema"]
    assert schema["properties"]["quantity"]["exclusiveMinimum"] == 0
    assert schema["additionalProperties"] is False

    class Other(BaseStrategy):
        name = "buy_then_sell"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other)
    with pytest.raises(ValueError, match="no name"):
        registry.register(BaseStrategy)


def test_unknown_kind_is_a_validation_error() -> None:
    registry = StrategyRegistry(include_builtins=False)
    registry.register(BuyThenSell)
    with pytest.raises(DomainError) as caught:
        registry.get("nope")
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert "'nope'" in caught.value.message and "buy_then_sell" in caught.value.message


def test_entry_points_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    good = EntryPoint(name="outside", value=f"{__name__}:FromEntryPoint", group=ENTRY_POINT_GROUP)
    broken = EntryPoint(name="broken", value="no_such_module_xyz:Nope", group=ENTRY_POINT_GROUP)
    not_a_strategy = EntryPoint(name="odd", value="pathlib:Path", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        registry_module, "entry_points", _entry_points(good, broken, not_a_strategy)
    )
    registry = StrategyRegistry(include_builtins=False)
    assert registry.get("outside") is FromEntryPoint
    assert registry.names() == ["outside"]  # the broken ones are skipped, not fatal
    assert registry.kinds()[0]["category"] == "crypto"


def test_builtins_win_over_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = StrategyRegistry(include_builtins=False)
    registry.register(BuyThenSell)
    clash = EntryPoint(
        name="buy_then_sell", value=f"{__name__}:FromEntryPoint", group=ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(registry_module, "entry_points", _entry_points(clash))
    assert registry.get("buy_then_sell") is BuyThenSell


def test_builtins_are_loaded_when_present() -> None:
    registry = StrategyRegistry()
    try:
        from trading_backend.strategies.builtin import BUILTINS  # type: ignore[attr-defined]
    except ImportError:
        assert registry.names() == [] or all(registry.get(n) for n in registry.names())
        return
    assert {cls.name for cls in BUILTINS} <= set(registry.names())


def test_strategies_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "entry_points", _entry_points())
    (tmp_path / "mine.py").write_text(
        "from trading_backend.strategies.base import BaseStrategy, StrategyParams\n"
        "class P(StrategyParams):\n"
        "    size: int = 1\n"
        "class Mine(BaseStrategy):\n"
        "    name = 'mine'\n"
        "    description = 'from a file'\n"
        "    Params = P\n"
        "class Helper(BaseStrategy):\n"
        "    pass\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('bad file')\n")
    (tmp_path / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (tmp_path / "notes.txt").write_text("not python")
    registry = StrategyRegistry(tmp_path, include_builtins=False)
    assert registry.names() == ["mine"]
    cls = registry.get("mine")
    assert cls.Params.model_validate({"size": 3}).size == 3  # type: ignore[attr-defined]
    assert registry.kinds()[0]["description"] == "from a file"

    missing = StrategyRegistry(tmp_path / "missing", include_builtins=False)
    assert missing.names() == []
