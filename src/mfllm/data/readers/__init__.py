"""Dataset readers, one module per format. A module registers its reader with
:func:`~mfllm.data.readers.base.register_reader`; adding a module here adds a format."""

from __future__ import annotations

import importlib
import pkgutil

from mfllm.data.readers.base import READER_REGISTRY, DatasetReader


def discover_readers() -> dict[str, type[DatasetReader]]:
    """Every reader in this package by format name, in detection order (imports each module)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(READER_REGISTRY.items(), key=lambda item: item[1].detect_order))
