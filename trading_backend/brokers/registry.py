"""Broker registry: adapters are found through the ``trading_backend.brokers`` entry-point
group, so an outside package adds a broker by declaring one entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import ClassVar

from trading_backend.brokers.base import Broker
from trading_backend.domain import DomainError, ErrorCode

ENTRY_POINT_GROUP = "trading_backend.brokers"


class BrokerRegistry:
    _brokers: ClassVar[dict[str, type[Broker]]] = {}
    _loaded = False

    @classmethod
    def register(cls, name: str, broker_cls: type[Broker]) -> None:
        cls._brokers[str(name)] = broker_cls

    @classmethod
    def _load_entry_points(cls) -> None:
        if cls._loaded:
            return
        cls._loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in cls._brokers:
                cls._brokers[ep.name] = ep.load()
        if "paper" not in cls._brokers:
            # Running from a source tree that was never installed: the built-in still works.
            from trading_backend.brokers.paper import PaperBroker

            cls._brokers["paper"] = PaperBroker

    @classmethod
    def get(cls, name: str) -> type[Broker]:
        cls._load_entry_points()
        try:
            return cls._brokers[str(name)]
        except KeyError:
            raise DomainError(
                f"unknown broker {name!r}; available: {', '.join(cls.names())}",
                ErrorCode.BROKER_NOT_SUPPORTED,
            ) from None

    @classmethod
    def names(cls) -> list[str]:
        cls._load_entry_points()
        return sorted(cls._brokers)
