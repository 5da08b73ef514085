"""Typed configuration: frozen dataclasses loaded from YAML with unknown keys rejected.

Each component owns a ``@dataclass(frozen=True)`` config whose defaults are the documented
values; ``load_config(cls, data)`` builds one from a nested dict (e.g. parsed YAML), recursing
into nested dataclass fields and raising ``ConfigError`` that names any unknown or ill-typed key.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nre_ros.errors import ConfigError

C = TypeVar('C')


def load_config(cls: type[C], data: dict[str, Any] | None, where: str = '',
                base: C | None = None) -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    Keys absent from ``data`` keep the values of ``base`` (default: ``cls()``), recursively, so
    a partial YAML overrides only what it names.
    """
    base = cls() if base is None else base
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f'{where or cls.__name__}: expected a mapping, got {type(data).__name__}')
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f'{where or cls.__name__}: unknown key(s) {unknown}; '
                          f'valid keys: {sorted(fields)}')
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        path = f'{where}.{key}' if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = load_config(hint, value, path, getattr(base, key))
        else:
            kwargs[key] = _coerce(hint, value, path)
    return dataclasses.replace(base, **kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f'{path}: expected {hint.__name__}, got {value!r}')
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, path) if inner is not Any and inner is not Ellipsis
                     else v for v in value)
    if hint is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f'{path}: value {value!r} does not match {hint}')
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f'{path}: expected one of {typing.get_args(hint)}, got {value!r}')
        return value
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file into a dict (empty file -> {}); ConfigError on failure."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'cannot read config {path}: {exc}') from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: top level must be a mapping')
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for logs, map metadata, YAML dumps)."""
    return dataclasses.asdict(config)
