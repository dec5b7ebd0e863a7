"""Strategy registry: strategy kinds by name.

Three sources, in order of precedence (the first to claim a name keeps it):

1. the built-ins (``trading_backend.strategies.builtin.BUILTINS``) and anything passed to
   ``register``;
2. the ``trading_backend.strategies`` entry-point group, so an outside package adds a
   strategy by declaring one entry point (the entry point's name is the kind)::

       [project.entry-points."trading_backend.strategies"]
       my_strategy = "my_package.strategies:MyStrategy"

3. ``*.py`` files in a configured directory (setting ``strategies_dir``): every
   ``BaseStrategy`` subclass defined in such a file with a non-empty ``name``.

A source that fails to load (a broken plugin or file) is logged and skipped; it never
stops the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import structlog

from trading_backend.domain import DomainError, ErrorCode
from trading_backend.strategies.base import BaseStrategy

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "trading_backend.strategies"
_DIR_MODULE_PREFIX = "trading_backend_user_strategies"


class StrategyRegistry:
    def __init__(
        self, strategies_dir: Path | str | None = None, *, include_builtins: bool = True
    ) -> None:
        self._strategies_dir = Path(strategies_dir) if strategies_dir else None
        self._include_builtins = include_builtins
        self._classes: dict[str, type[BaseStrategy]] = {}
        self._loaded = False

    # -- registration ------------------------------------------------------------------
    def register(self, cls: type[BaseStrategy], name: str | None = None) -> type[BaseStrategy]:
        """Add a strategy class under ``name`` (default ``cls.name``); usable as a
        decorator. Registering another class under a taken name is an error."""
        if not (isinstance(cls, type) and issubclass(cls, BaseStrategy)):
            raise TypeError(f"{cls!r} is not a BaseStrategy subclass")
        key = name or cls.name
        if not key:
            raise ValueError(f"{cls.__name__} has no name")
        existing = self._classes.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f"strategy kind {key!r} is already registered ({existing!r})")
        self._classes[key] = cls
        return cls

    def _add(self, name: str, cls: object, source: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, BaseStrategy)):
            log.warning("strategy_not_a_strategy", name=name, source=source)
            return
        if name in self._classes:
            if self._classes[name] is not cls:
                log.warning("strategy_name_taken", name=name, source=source)
            return
        self._classes[name] = cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._include_builtins:
            self._load_builtins()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception:
                log.exception("strategy_entry_point_failed", name=ep.name, value=ep.value)
                continue
            self._add(ep.name, loaded, f"entry point {ep.value}")
        if self._strategies_dir is not None:
            self._load_directory(self._strategies_dir)

    def _load_builtins(self) -> None:
        try:
            module = importlib.import_module("trading_backend.strategies.builtin")
        except ModuleNotFoundError as exc:
            if exc.name not in ("trading_backend.strategies.builtin",):
                log.exception("strategy_builtins_failed")
            return
        except Exception:
            log.exception("strategy_builtins_failed")
            return
        for cls in getattr(module, "BUILTINS", []):
            self._add(cls.name, cls, "builtin")

    def _load_directory(self, directory: Path) -> None:
        if not directory.is_dir():
            log.warning("strategies_dir_missing", path=str(directory))
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module_name = f"{_DIR_MODULE_PREFIX}.{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except Exception:
                sys.modules.pop(module_name, None)
                log.exception("strategy_file_failed", path=str(path))
                continue
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if (
                    issubclass(obj, BaseStrategy)
                    and obj is not BaseStrategy
                    and obj.__module__ == module_name
                    and obj.name
                    and not inspect.isabstract(obj)
                ):
                    self._add(obj.name, obj, str(path))

    # -- lookup ------------------------------------------------------------------------
    def get(self, kind: str) -> type[BaseStrategy]:
        self._load()
        try:
            return self._classes[str(kind)]
        except KeyError:
            available = ", ".join(self.names()) or "none"
            raise DomainError(
                f"unknown strategy kind {kind!r}; available: {available}",
                ErrorCode.VALIDATION_ERROR,
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def kinds(self) -> list[dict[str, Any]]:
        """Every kind with its description, category and the JSON schema of its Params."""
        self._load()
        return [
            {
                "name": name,
                "description": cls.description,
                "category": cls.category,
                "params_schema": cls.Params.model_json_schema(),
            }
            for name, cls in sorted(self._classes.items())
        ]
