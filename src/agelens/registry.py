"""Name → builder registries for backbones, heads, datasets and occluders (timm-style), and the plugins that add to
them.

A plugin is a module of the user's that registers its own components (`BACKBONES.register("mine")`, ...) when
imported. Name it in `AGELENS_PLUGINS` (comma-separated module names) or as an `agelens.plugins` entry point of an
installed package: the CLI imports it at start, worker processes at theirs, and a registry asked for a name it does
not hold imports it before giving up, so a model built from plugin components also loads in a fresh process
(`docs/extending.md`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

PLUGINS_ENV = "AGELENS_PLUGINS"
ENTRY_POINT_GROUP = "agelens.plugins"
_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """The plugin modules named by AGELENS_PLUGINS and by installed packages' `agelens.plugins` entry points."""
    from importlib.metadata import entry_points

    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    return names + [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins() -> list[str]:
    """Import the plugin modules not imported yet (their registrations run); ConfigError naming one that fails."""
    import importlib

    new = [m for m in plugin_modules() if m not in _loaded]
    for m in new:
        try:
            importlib.import_module(m)
        except Exception as e:  # a plugin's own error, or a typo in AGELENS_PLUGINS
            raise ConfigError(f"agelens plugin {m!r} ({PLUGINS_ENV} or an {ENTRY_POINT_GROUP} entry point) could not "
                              f"be imported: {type(e).__name__}: {e}") from e
        _loaded.add(m)
    return new


class Registry:
    """A named table of builders; `get` raises a ConfigError listing valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            old = self._items.get(name)
            same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
            if old is not None and not same:  # the same builder again (a module reloaded, a notebook cell re-run) is fine
                raise ConfigError(f"{self.kind} {name!r} is registered twice: by {old.__module__}.{old.__qualname__} "
                                  f"and {fn.__module__}.{fn.__qualname__}")
            self._items[name] = fn
            return fn

        return deco

    def has(self, name: str) -> bool:
        """Whether `name` is registered, the plugins imported first where it is not (a component of the user's,
        registered by a plugin not imported yet)."""
        if name not in self._items:
            load_plugins()
        return name in self._items

    def get(self, name: str) -> Callable[..., Any]:
        if not self.has(name):
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))} (one of "
                              f"your own is registered by your code: name its module in {PLUGINS_ENV}=module[,...] so "
                              "that the CLI, worker processes and a fresh process import it, or export the model to "
                              "ONNX, which runs without it: docs/extending.md)")
        return self._items[name]

    def options(self, name: str) -> tuple[list[str], bool]:
        """The parameters `name`'s builder names (in order), and whether it also takes any keyword (**kwargs)."""
        import inspect

        params = inspect.signature(self.get(name)).parameters.values()
        return ([p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD],
                any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


BACKBONES = Registry("backbone")
HEADS = Registry("head")
DATASETS = Registry("dataset")
OCCLUDERS = Registry("occluder")  # drawing functions with their `styles` (occlusion.families.register_occluder)
