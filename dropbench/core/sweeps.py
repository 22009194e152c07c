"""Sweeps: a mapping of dotted field names to lists of values (``{dropout.cutoff_epoch: [10, 25], dropout.rate:
[0.1, 0.2]}``), expanded into the cartesian product of its points. Each point is a variant of the config it sweeps,
with its own name (``dropbench.core.settings.variant_name``) and settings digest: the planner, the run lifecycle
and ``compare`` see nothing but variants."""

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from dropbench.core.errors import UserInputError


def sweep_points(raw: Any, field_name: str) -> list[dict[str, Any]]:
    """The points of a sweep, in the order of ``itertools.product`` over its lists (the last field varies
    fastest), each a mapping of the swept fields to one value."""
    if not isinstance(raw, Mapping) or not raw:
        raise UserInputError(field_name, "must be a mapping of fields to lists of values, e.g. {dropout.rate: [0.1]}")
    for key, values in raw.items():
        where = f"{field_name}.{key}"
        if not isinstance(key, str) or not key:
            raise UserInputError(field_name, f"{key!r} is not a field name")
        if not isinstance(values, list) or not values:
            raise UserInputError(where, f"{values!r} must be a non-empty list of values")
        seen = [repr(value) for value in values]
        for index, text in enumerate(seen):
            if text in seen[:index]:
                raise UserInputError(f"{where}[{index}]", f"lists {values[index]!r} twice")
    keys = list(raw)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*raw.values())]


def check_each_field_matters(
    points: Sequence[Mapping[str, Any]],
    effective: Sequence[Hashable],
    base_effective: Hashable,
    field_name: str,
    why: Callable[[str], str],
) -> None:
    """Refuse a swept field that changes nothing: over each set of points that differ in that field only, its
    values give the same effective settings (``effective[i]`` of ``points[i]``); a field swept over one value must
    give other settings than the base config (``base_effective``). ``why(key)`` says why it changes nothing."""
    keys = list(points[0]) if points else []
    for key in keys:
        groups: dict[tuple, set] = {}
        for point, settings in zip(points, effective, strict=True):
            others = tuple(repr(point[k]) for k in keys if k != key)
            groups.setdefault(others, set()).add(settings)
        single = len({repr(point[key]) for point in points}) == 1
        if single and all(settings == base_effective for settings in effective):
            raise UserInputError(f"{field_name}.{key}", f"changes nothing: {why(key)}")
        if not single and all(len(group) == 1 for group in groups.values()):
            raise UserInputError(f"{field_name}.{key}", f"changes nothing: {why(key)}")


def is_geometric(values: Sequence[float]) -> bool:
    """Whether positive numbers are spaced by ratios rather than differences (a log axis reads them better):
    three or more, and their ratios closer to constant than their differences."""
    numbers = sorted(float(v) for v in values)
    if len(numbers) < 3 or numbers[0] <= 0:
        return False
    ratios = [b / a for a, b in itertools.pairwise(numbers)]
    steps = [b - a for a, b in itertools.pairwise(numbers)]

    def spread(xs: list[float]) -> float:
        mean = sum(xs) / len(xs)
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) / mean if mean else math.inf

    return spread([math.log(r) for r in ratios]) < spread(steps) if min(ratios) > 1 else False
