"""Typed settings: recipes, dataset configs and regimes are frozen dataclasses whose fields say how a value is
checked and what it changes. One loader reads them from YAML and ``key=value`` overrides: unknown keys, one
coercion to the field's type, one validator, and errors that name the field as the file spells it.

A field made with :func:`setting` carries its flags in ``dataclasses.field`` metadata:

- ``result``: the value changes what a run computes, so it is part of the settings digest (default true). Where
  the data is, names, seeds, logging and checkpoint cadence are not.
- ``features``: a linear probe's extracted features depend on it (default true), so it keys their cache.
- ``resumable``: a resumed run may change it (default false): how it checkpoints, compiles or is tracked.

A field that says nothing counts as a result and a feature input, and may not change on resume, so a new field can
make a cache miss or refuse a resume, but never serve a stale result.
"""

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, TypeVar

from dropbench.core.configs import check_keys
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import renamed_fields

T = TypeVar("T", bound="Settings")


@dataclass(frozen=True)
class Check:
    """A condition on one value, and how its error says what the value must be."""

    holds: Callable[[Any], bool]
    requirement: str  # "must be a positive integer"

    def __call__(self, value: Any, field_name: str) -> None:
        try:
            ok = self.holds(value)
        except TypeError:
            ok = False
        if not ok:
            raise UserInputError(field_name, f"{value!r} {self.requirement}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


POSITIVE_INT = Check(lambda v: _whole(v) and v >= 1, "must be a positive integer")
OPTIONAL_POSITIVE_INT = Check(lambda v: v is None or (_whole(v) and v >= 1), "must be a positive integer or null")
NON_NEGATIVE_INT = Check(lambda v: _whole(v) and v >= 0, "must be an integer >= 0")
NON_NEGATIVE = Check(lambda v: _number(v) and v >= 0, "must be a number >= 0")
OPTIONAL_NON_NEGATIVE = Check(lambda v: v is None or (_number(v) and v >= 0), "must be a number >= 0 or null")
PROBABILITY = Check(lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]")


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A number in an interval, e.g. ``within(0, 1, high_open=True)`` for ``[0, 1)``."""

    def holds(v: Any) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return _number(v) and above and below

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Check(holds, f"must be in {interval}")


@dataclass(frozen=True)
class OneOf(Check):
    """A name from ``choices``, or from what ``choices()`` lists (asked only when a value is checked). ``holds``,
    where given, accepts a value first (timm's ``is_model`` takes names that its list spells otherwise)."""

    holds: Callable[[Any], bool] | None = None
    requirement: str = ""
    choices: Sequence[str] | Callable[[], Sequence[str]] = ()
    what: str = "value"

    def __call__(self, value: Any, field_name: str) -> None:
        if self.holds is not None and isinstance(value, str) and self.holds(value):
            return
        names = list(self.choices() if callable(self.choices) else self.choices)
        if value not in names:
            raise UserInputError(field_name, f"unknown {self.what} '{value}'{did_you_mean(str(value), names)}")


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]], what: str) -> OneOf:
    return OneOf(choices=choices, what=what)


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    check: Callable[[Any, str], Any] | None = None,
    result: bool = True,
    features: bool = True,
    resumable: bool = False,
    omit_at_default: bool = False,
) -> Any:
    """A settings field: its default (or ``default_factory``), its check (called with the value and the field's
    name, it raises UserInputError) and what it changes (see the module's docstring). A field added after runs were
    recorded is ``omit_at_default``: left out of the settings at its default, so that their digests stay the same."""
    metadata = {"check": check, "result": result, "features": features, "resumable": resumable}
    metadata["omit_at_default"] = omit_at_default
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag(f: dataclasses.Field, name: str) -> bool:
    """A field's flag: what it says, else true (``resumable``: false)."""
    return f.metadata.get(name, name != "resumable")


def _fields(settings: Any) -> list[dataclasses.Field]:
    """The fields a file gives (not those marked ``key=False``, e.g. a recipe's record of its overrides)."""
    return [f for f in dataclasses.fields(settings) if f.metadata.get("key", True)]


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass. Subclasses name how errors prefix their fields (``recipe.``,
    ``dataset.``) and may add rules between fields in :meth:`check`.

    ``variant`` holds the values that make these settings a variant of the named config (a sweep's point, or a
    regime's overrides on the command line), by dotted field name: :func:`variant_name` names the variant after
    them. It is no key of a file and no setting: the fields themselves hold the values."""

    PREFIX: ClassVar[str] = "settings."
    # Whole numbers given to float fields stay ints, as recipes and regimes have always read them: their settings
    # digests, and so the identities of existing records, depend on it. Dataset configs make them floats.
    WHOLE_FLOATS_STAY_INT: ClassVar[bool] = True

    variant: Mapping[str, Any] = dataclasses.field(
        default_factory=dict, kw_only=True, compare=False, repr=False, metadata={"key": False}
    )

    @classmethod
    def from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str | None = None) -> T:
        """Check the keys, coerce every value to its field's type, build, then validate."""
        prefix = cls.PREFIX if prefix is None else prefix
        check_keys(data, cls.keys(), prefix)
        hints = _type_hints(cls)
        stay_int = cls.WHOLE_FLOATS_STAY_INT
        values = {key: coerce(value, hints[key], f"{prefix}{key}", stay_int) for key, value in data.items()}
        for f in _fields(cls):
            if f.default is MISSING and f.default_factory is MISSING and f.name not in values:
                raise UserInputError(f"{prefix}{f.name}", f"missing; give a {f.name}")
        settings = cls(**values)
        settings.validate(prefix)
        return settings

    @classmethod
    def from_config(cls: type[T], data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> T:
        """A config file's mapping with ``key=value`` overrides on top; an override may name a nested field dotted
        (``dropout.rate``, ``kwargs.depth``). An unknown key of the file is named with the prefix (``recipe.lrr``),
        an unknown override by itself (``lrr``)."""
        check_keys(data, cls.keys(), cls.PREFIX)
        merged = dict(data)
        for key, value in (overrides or {}).items():
            merged = cls.overridden(merged, key, value)
        return cls.from_mapping(merged)

    @classmethod
    def overridden(cls, data: Mapping[str, Any], key: str, value: Any, full_key: str | None = None) -> dict:
        """``data`` with ``key`` (dotted into nested settings and mappings) set to ``value``."""
        full_key = full_key or key
        head, dotted, rest = key.partition(".")
        if head not in cls.keys():
            known = cls.dotted_keys()
            prefix = full_key[: len(full_key) - len(key)]
            raise UserInputError(full_key, f"unknown override{did_you_mean(full_key, [prefix + k for k in known])}")
        if not dotted:
            return dict(data) | {head: value}
        inner = data.get(head) or {}
        nested = _nested_settings(_type_hints(cls)[head])
        if nested is not None and isinstance(inner, Mapping):
            return dict(data) | {head: nested.overridden(inner, rest, value, full_key)}
        if _type_hints(cls)[head] is dict and isinstance(inner, Mapping):
            return dict(data) | {head: dict(inner) | {rest: value}}  # a free mapping: timm kwargs
        raise UserInputError(full_key, f"{head} has no fields to set; give {head}={value!r}")

    @classmethod
    def dotted_keys(cls) -> list[str]:
        """Every key an override may name: the fields, and those of nested settings dotted."""
        keys = []
        for name in cls.keys():
            nested = _nested_settings(_type_hints(cls)[name])
            keys += [name] + ([f"{name}.{key}" for key in nested.dotted_keys()] if nested else [])
        return keys

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a file may give."""
        return [f.name for f in _fields(cls)]

    @classmethod
    def names_where(cls, flag_name: str) -> set[str]:
        """The fields that ``flag_name`` holds for: ``result``, ``features`` or ``resumable``."""
        return {f.name for f in _fields(cls) if flag(f, flag_name)}

    def validate(self, prefix: str | None = None) -> None:
        """Every field's check, then the class's cross-field rules."""
        prefix = self.PREFIX if prefix is None else prefix
        for f in _fields(self):
            if f.metadata.get("check") is not None:
                f.metadata["check"](getattr(self, f.name), f"{prefix}{f.name}")
        self.check(prefix)

    def check(self, prefix: str) -> None:
        """Rules between fields (none by default)."""

    def to_dict(self) -> dict:
        """Every field as plain JSON values (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in _fields(self)}

    def where(self, flag_name: str) -> dict:
        """The fields (as :meth:`to_dict` gives them) that ``flag_name`` holds for: ``result``, ``features``."""
        data = self.to_dict()
        return {
            f.name: data[f.name]
            for f in _fields(self)
            if flag(f, flag_name) and not (f.metadata.get("omit_at_default") and getattr(self, f.name) == f.default)
        }

    def settings(self) -> dict:
        """What changes a run's result: the fields flagged ``result``."""
        return self.where("result")


@functools.cache
def _type_hints(settings_class: type) -> dict[str, Any]:
    return typing.get_type_hints(settings_class)


def _nested_settings(hint: Any) -> type["Settings"] | None:
    """The settings class a field holds (``DropSetting | None``), or None."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    for kind in typing.get_args(hint) if union else (hint,):
        if isinstance(kind, type) and issubclass(kind, Settings):
            return kind
    return None


def variant_name(base: str, values: Mapping[str, Any]) -> str:
    """The name of a variant of ``base``: ``early_dropout.cutoff_epoch=25.rate=0.1``. Each value goes under the
    last part of its dotted field name where that is unique among ``values``, else under the whole name; the
    values as YAML writes them (``0.1``, ``true``, ``linear``), in the order given. Names stay filesystem-safe:
    a character outside ``[A-Za-z0-9_.=+-]`` becomes ``-``."""
    if not values:
        return base
    leaves = [key.rpartition(".")[2] for key in values]
    items = []
    for key, leaf, value in zip(values, leaves, values.values(), strict=True):
        label = leaf if leaves.count(leaf) == 1 else key
        items.append(f"{label}={_value_text(value)}")
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", ".".join([base, *items]))


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(item) for item in value)
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def coerce(value: Any, hint: Any, field_name: str, whole_floats_stay_int: bool = False) -> Any:
    """A YAML or ``key=value`` value as the field's type. YAML 1.1 reads ``4e-3`` as a string: a float field takes
    it as the number it is meant to be; a tuple field takes a list; a nested settings class takes a mapping."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    allowed = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        if dict in allowed:
            return {}  # null for a mapping: none
        if any(typing.get_origin(kind) is tuple for kind in allowed):
            return ()  # null for a list: none
        raise UserInputError(field_name, "must not be null")
    nested = _nested_settings(hint)
    if nested is not None:
        if not isinstance(value, Mapping):
            raise UserInputError(field_name, f"{value!r} must be a mapping of {', '.join(nested.keys())}")
        return nested.from_mapping(value, f"{field_name}.")
    if bool in allowed and isinstance(value, bool):
        return value
    if dict in allowed and isinstance(value, Mapping):
        return dict(value)
    if float in allowed and not isinstance(value, bool):
        if _whole(value) and whole_floats_stay_int:
            return value
        if isinstance(value, (int, float, str)):
            try:
                return float(value)
            except ValueError:
                if str not in allowed:
                    raise UserInputError(field_name, f"'{value}' is not a number") from None
    for kind in allowed:
        if typing.get_origin(kind) is tuple:
            return _coerce_tuple(value, kind, field_name, whole_floats_stay_int)
    for kind in (int, str):
        if kind in allowed and isinstance(value, kind) and not isinstance(value, bool):
            return value
    raise UserInputError(field_name, f"{value!r} is not {_describe(allowed)}")


def _coerce_tuple(value: Any, hint: Any, field_name: str, whole_floats_stay_int: bool) -> tuple:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]  # one value where a list is expected
    if not isinstance(value, (list, tuple)):
        raise UserInputError(field_name, f"{value!r} must be a list")
    items = typing.get_args(hint)
    if len(items) == 2 and items[1] is Ellipsis:
        kinds = [items[0]] * len(value)
    else:
        if len(value) != len(items):
            raise UserInputError(field_name, f"{list(value)} must be a list of {len(items)} values")
        kinds = list(items)
    return tuple(
        coerce(item, kind, f"{field_name}[{index}]", whole_floats_stay_int)
        for index, (item, kind) in enumerate(zip(value, kinds, strict=True))
    )


def _describe(allowed: Sequence[Any]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    kinds = [kind for kind in allowed if kind is not type(None)]
    return " or ".join(names.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)


def add_arguments(
    parser: Any, settings_class: type[Settings], skip: Sequence[str] = (), optional: bool = False
) -> list[str]:
    """A settings class's scalar fields as ``--options`` of an argparse parser (a field without a default is
    required unless ``optional``, a ``one_of`` field lists its choices); returns the fields added, for
    :func:`from_arguments`."""
    hints = typing.get_type_hints(settings_class)
    added = []
    for f in _fields(settings_class):
        if f.name in skip:
            continue
        kind = hints[f.name]
        choices = getattr(f.metadata.get("check"), "choices", None)
        required = f.default is MISSING and f.default_factory is MISSING and not optional
        no_default = f.default is MISSING and f.default_factory is MISSING
        parser.add_argument(
            option_name(f.name),
            type=kind,
            choices=choices or None,
            required=required,
            default=None if no_default else f.default,
        )
        added.append(f.name)
    return added


def option_name(field_name: str) -> str:
    """The ``--option`` that gives a field on the command line."""
    return "--" + field_name.replace("_", "-")


def from_arguments(settings_class: type[T], args: Any, names: Sequence[str]) -> T:
    """The settings that parsed ``--options`` give, errors naming the option."""
    with renamed_fields(option_name):
        return settings_class.from_mapping({name: getattr(args, name) for name in names}, "")
