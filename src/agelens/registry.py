"""Name → builder registries for backbones, heads and datasets (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError


class Registry:
    """A named table of builders; `get` raises a ConfigError listing valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}")
        return self._items[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


BACKBONES = Registry("backbone")
HEADS = Registry("head")
DATASETS = Registry("dataset")
