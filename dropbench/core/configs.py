"""Where the shipped configs live, YAML loading, key checks and the one ``key=value`` parser."""

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from dropbench.core.errors import UserInputError, did_you_mean

_PACKAGE = Path(__file__).resolve().parents[1]
# The folder that holds ``configs/`` and ``results/paper/``: the installed package, or the checkout's root.
DATA_ROOT = _PACKAGE if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent
CONFIG_ROOT = DATA_ROOT / "configs"
PAPER_RESULTS = DATA_ROOT / "results" / "paper"
NOISE_FLOORS = DATA_ROOT / "results" / "noise_floors"  # measured by the sensitivity suite, with their provenance


def load_yaml(path: str | os.PathLike, field: str) -> dict:
    """Load a YAML mapping; a missing or malformed file is a UserInputError naming ``field``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(field, f"no such file '{path}'")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserInputError(field, f"'{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserInputError(field, f"'{path}' must hold a YAML mapping")
    return data


def resolve_config(value: str, folder: str) -> Path | None:
    """A config given as a path (with or without ``.yaml``) or as a name under ``configs/<folder>/``."""
    for candidate in (Path(value), Path(f"{value}.yaml"), CONFIG_ROOT / folder / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def known_configs(folder: str) -> list[str]:
    """The names of the shipped configs in ``configs/<folder>/``."""
    return sorted(p.stem for p in (CONFIG_ROOT / folder).glob("*.yaml"))


def shipped_path(value: str) -> Path | None:
    """A file or folder given relative to the working folder, else to ``DATA_ROOT`` (``configs/...``)."""
    for candidate in (Path(value), DATA_ROOT / value):
        if candidate.exists():
            return candidate.resolve()
    return None


def check_keys(data: dict, allowed: Iterable[str], prefix: str) -> None:
    """Every key of ``data`` must be ``allowed``; an unknown one is named as ``<prefix><key>``."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise UserInputError(f"{prefix}{key}", f"unknown key{did_you_mean(str(key), allowed)}")


def yaml_scalar(raw: str, key: str) -> Any:
    """A value as YAML reads it (``1e-3`` → 0.001, ``null`` → None, ``[0.5,1]`` → a list)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserInputError(key, f"cannot parse value '{raw}'") from None


def parse_key_values(
    items: Iterable[str], field: str = "overrides", parse_value: Callable[[str, str], Any] = yaml_scalar
) -> dict[str, Any]:
    """``key=value`` items into a dict, values decoded by ``parse_value(raw, key)`` (YAML scalars by default).

    The one parser of every ``key=value`` list: recipe and dataset overrides, ``--diagnostics``,
    ``--cfg-options`` (with mmengine's value syntax) and suite options."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserInputError(field, f"'{item}' is not key=value")
        values[key] = parse_value(raw, key)
    return values


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested mapping as one level of dotted keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
