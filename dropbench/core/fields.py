"""Checks of a config file's fields, each error naming the field as the file spells it: required values, lists,
``key=value`` options in either spelling, and a loader's errors renamed into the file's terms."""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from dropbench.core.errors import UserInputError


@contextmanager
def renamed_fields(rename: Callable[[str], str]) -> Iterator[None]:
    """Re-raise a loader's UserInputError under the suite file's field name."""
    try:
        yield
    except UserInputError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise UserInputError(rename(err.field), message) from None


def config_field(loader: str, overridden: set[str], file_field: str, overrides_field: str) -> Callable[[str], str]:
    """Name a config loader's error field in suite terms: the config itself, one of its keys, or an override.

    Loaders name their config ``<loader>`` (``recipe``, ``dataset``), a key of it ``<loader>.<key>``, and an
    unknown override by its bare key."""

    def rename(loader_field: str) -> str:
        if loader_field == loader:
            return file_field
        key = loader_field.removeprefix(f"{loader}.")
        if key in overridden or not loader_field.startswith(f"{loader}."):
            return f"{overrides_field}.{key}"
        return f"{file_field}.{key}"

    return rename


def require(data: dict, key: str, prefix: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data or data[key] is None:
        raise UserInputError(f"{prefix}{key}", f"missing; give {what}")
    if not isinstance(data[key], kind):
        raise UserInputError(f"{prefix}{key}", f"{data[key]!r} is not {what}")
    return data[key]


def non_empty_list(data: dict, key: str, item: type, what: str, prefix: str = "") -> list:
    values = require(data, key, prefix, list, f"a list of {what}")
    if not values:
        raise UserInputError(f"{prefix}{key}", f"is empty; give at least one of {what}")
    for index, value in enumerate(values):
        if not isinstance(value, item) or isinstance(value, bool):
            raise UserInputError(f"{prefix}{key}[{index}]", f"{value!r} is not one of {what}")
    if len(set(values)) != len(values):
        duplicate = next(v for v in values if values.count(v) > 1)
        raise UserInputError(f"{prefix}{key}", f"lists {duplicate!r} twice")
    return values


def yaml_value(value: Any) -> str:
    """A value as the ``key=value`` text that ``parse_overrides`` (YAML) reads back as the same value."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def mm_value(value: Any, field_name: str) -> str:
    """A value as the ``--cfg-options`` text that mmengine's DictAction reads back as the same value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        inner = ",".join(mm_value(item, field_name) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise UserInputError(field_name, f"{value!r}: give nested keys dotted (a.b=1), values as scalars or lists")


def option_items(raw: Any, field_name: str, render: Callable[[Any, str], str]) -> list[str]:
    """Overrides given as a mapping ``{key: value}`` or as a list of ``key=value`` strings."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [f"{key}={render(value, f'{field_name}.{key}')}" for key, value in raw.items()]
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise UserInputError(f"{field_name}[{index}]", f"{item!r} is not key=value")
        return list(raw)
    raise UserInputError(field_name, f"{raw!r} is neither a mapping nor a list of key=value")
