"""Simulation methods: what an agent sees of the population before acting.

A method is one :class:`~mfllm.interfaces.ContextProvider` subclass in one module of this package,
decorated with :func:`register`. Every module here is imported the first time the registry is read,
so a new file is all it takes: the config's ``method`` field, the CLI's choices, dry-run estimates,
evaluation and the baselines of the headline comparison read the registry. Other packages can add
methods through the ``mfllm.methods`` entry-point group (each entry point names a module to import).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from typing import TypeVar

from mfllm.interfaces import ContextProvider

ENTRY_POINT_GROUP = "mfllm.methods"
ALIASES = {"mf": "mf-stats"}
"""Names that stand for a registered method: ``mf`` is the default mean field, chosen by information gain
and KL on the development events named in the README. Configs record the resolved name."""
_REGISTRY: dict[str, type[ContextProvider]] = {}
_discovered = False
MethodClass = TypeVar("MethodClass", bound=type[ContextProvider])


def register(cls: MethodClass) -> MethodClass:
    """Class decorator: register ``cls`` under ``cls.name`` (names are unique)."""
    for attribute in ("name", "description"):
        if not isinstance(getattr(cls, attribute, None), str):
            raise TypeError(f"method class {cls.__qualname__} must set the class attribute {attribute!r}")
    registered = _REGISTRY.get(cls.name)
    if registered is not None and registered.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is taken by {registered.__module__}.{registered.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(entry_point.value)
    _discovered = True


def resolve_method(name: str) -> str:
    """The registered name ``name`` stands for (itself unless it is an alias)."""
    return ALIASES.get(name, name)


def get_method(name: str) -> type[ContextProvider]:
    """The method registered as ``name`` (or the one an alias stands for); a ValueError lists the names."""
    _discover()
    resolved = resolve_method(name)
    if resolved not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(method_names())} (aliases: "
                         f"{', '.join(f'{a} = {m}' for a, m in ALIASES.items())})")
    return _REGISTRY[resolved]


def method_names() -> tuple[str, ...]:
    """Registered method names, mean-field methods first, then baselines, each alphabetically."""
    _discover()
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].is_baseline, n)))


def default_method_names() -> tuple[str, ...]:
    """The registered methods a comparison runs when none are named: every method but ablations."""
    return tuple(name for name in method_names() if _REGISTRY[name].ablation_of is None)


def baseline_names() -> tuple[str, ...]:
    """The methods that mean-field methods are compared against."""
    return tuple(name for name in method_names() if _REGISTRY[name].is_baseline)


def mean_field_names() -> tuple[str, ...]:
    """The registered mean-field methods (every method that is not a baseline)."""
    return tuple(name for name in method_names() if not _REGISTRY[name].is_baseline)


__all__ = ["ALIASES", "ENTRY_POINT_GROUP", "baseline_names", "default_method_names", "get_method", "mean_field_names", "method_names", "register", "resolve_method"]
