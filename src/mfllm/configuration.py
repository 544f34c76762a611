"""The base of every config: a pydantic model read from YAML, with command-line overrides on top.

Command-line flags are derived from the fields (:meth:`YamlConfig.add_arguments`): each field becomes
``--field-name`` with its description as help text, so a config and its command never drift apart.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict
from typing_extensions import Self


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _argument_options(annotation: Any) -> dict[str, Any]:
    """argparse options (type, nargs, action) for a field's type."""
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation}
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return {"type": type(choices[0]), "choices": choices}
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = args[0] if args and args[0] in (int, float, str) else str
        if origin is tuple and Ellipsis not in typing.get_args(annotation):
            return {"type": item, "nargs": len(args)}
        return {"type": item, "nargs": "+", "action": "extend"}  # repeatable: --x a b --x c -> [a, b, c]
    members = typing.get_args(annotation)  # e.g. list[str] | str: take the list form
    for member in members:
        if typing.get_origin(member) in (list, tuple):
            return _argument_options(member)
    return {"type": str}


def parse_yaml(text: str, where: str) -> Any:
    """One YAML document; a malformed one is a one-line ValueError naming ``where`` and the position."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (exc.context, exc.problem)))
        raise ValueError(f"{where}: invalid YAML{position}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: invalid YAML: {' '.join(str(exc).split())}") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML (or JSON) file; a file that is not UTF-8 or not YAML is a one-line ValueError naming it and the position."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: not UTF-8 text: line {line}, byte {exc.start}: {exc.reason}") from None
    return parse_yaml(text, str(path))


class YamlConfig(BaseModel):
    """Unknown fields are errors; every field carries its help text in ``Field(description=...)``."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Self:
        """Values from a YAML file, then non-None overrides (CLI flags) on top."""
        values: dict[str, Any] = {}
        if yaml_path:
            loaded = read_yaml(yaml_path) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{yaml_path}: expected a mapping of config fields")
            values.update(loaded)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: Sequence[str] = (),
                      aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        """One ``--field-name`` flag per field (not in ``skip``), help from the field's description.
        Flags default to None ("not given") so values from a YAML config are kept unless a flag is given."""
        for name, field in cls.model_fields.items():
            if name in skip:
                continue
            default = "required" if field.is_required() else f"default: {field.default!r}"
            parser.add_argument(f"--{name.replace('_', '-')}", *(aliases or {}).get(name, ()), dest=name, default=None,
                                help=f"{field.description} ({default})", **_argument_options(field.annotation))

    @classmethod
    def overrides(cls, args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
        """The fields given on a command line parsed with :meth:`add_arguments` (with the same ``skip``)."""
        return {name: getattr(args, name) for name in cls.model_fields if name not in skip and getattr(args, name, None) is not None}
