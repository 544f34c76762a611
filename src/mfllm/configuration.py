"""The base of every config: a pydantic model read from YAML, with command-line overrides on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from typing_extensions import Self


class YamlConfig(BaseModel):
    """Unknown fields are errors; every field carries its help text in ``Field(description=...)``."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Self:
        """Values from a YAML file, then non-None overrides (CLI flags) on top."""
        values: dict[str, Any] = {}
        if yaml_path:
            loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{yaml_path}: expected a mapping of config fields")
            values.update(loaded)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)
