"""The one settings system (``dropbench.core.settings``): recipes, dataset configs and regimes share its coercion,
its validator and its flags, and a new field, a new check or a new schedule parameter is one declaration."""

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from dropbench.core.errors import UserInputError
from dropbench.core.identity import settings_digest
from dropbench.core.settings import POSITIVE_INT, Settings, add_arguments, from_arguments, one_of, setting
from dropbench.pretrain.config import Recipe, Regime, pretrain_identity
from dropbench.pretrain.schedules import DropSetting
from dropbench.pretrain.state import EXECUTION_SETTINGS
from dropbench.transfer.classification import task_identity
from dropbench.transfer.cls_data import ClsConfig, load_cls_config


@dataclass(frozen=True)
class Toy(Settings):
    PREFIX: ClassVar[str] = "toy."

    name: str = setting(result=False)
    steps: int = setting(10, check=POSITIVE_INT)
    lr: float = 1e-3
    size: tuple[float, float] = (0.5, 1.0)
    grid: tuple[float, ...] = (1.0,)
    tag: str | None = None
    kind: str = setting("a", check=one_of(("a", "b"), "kind"))
    schedule: DropSetting | None = None
    cadence: int = setting(0, result=False, resumable=True)


def test_values_are_coerced_to_their_field_types():
    toy = Toy.from_mapping(
        {"name": "t", "lr": "4e-3", "size": [1, "0.5e0"], "grid": 2, "tag": None, "schedule": {"rate": 0.1}}
    )
    assert toy.lr == 0.004 and toy.size == (1, 0.5) and toy.grid == (2,) and toy.tag is None
    assert toy.schedule == DropSetting(0.1)
    assert toy.to_dict()["size"] == [1, 0.5] and toy.to_dict()["schedule"]["rate"] == 0.1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"steps": 0}, "toy.steps"),
        ({"steps": 2.5}, "toy.steps"),
        ({"lr": "fast"}, "toy.lr"),
        ({"lr": None}, "toy.lr"),
        ({"size": [1]}, "toy.size"),
        ({"kind": "c"}, "toy.kind"),
        ({"schedule": {"rate": 1.5}}, "toy.schedule.rate"),
        ({"schedule": {"rate": 0.1, "mode": "late", "shape": "linear"}}, "toy.schedule.shape"),
        ({"schedule": 0.1}, "toy.schedule"),
        ({"stpes": 3}, "toy.stpes"),
        ({"steps": 3, "name": None}, "toy.name"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_field(data, field):
    with pytest.raises(UserInputError) as err:
        Toy.from_mapping({"name": "t"} | data)
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_missing_required_field_and_an_unknown_override_are_named():
    with pytest.raises(UserInputError, match="toy.name"):
        Toy.from_mapping({})
    with pytest.raises(UserInputError) as err:
        Toy.from_config({"name": "t"}, {"stepz": 1})
    assert err.value.field == "stepz" and "did you mean 'steps'" in str(err.value)


def test_a_field_that_says_nothing_changes_results_and_features_and_is_fixed_on_resume():
    toy = Toy.from_mapping({"name": "t"})
    assert "lr" in toy.settings() and "lr" in toy.where("features")
    assert "name" not in toy.settings() and "cadence" not in toy.settings()
    assert Toy.names_where("resumable") == {"cadence"}


def test_the_recipe_says_what_a_resumed_run_may_change():
    assert EXECUTION_SETTINGS == {"recipe.recovery_every", "recipe.compile", "recipe.loggers", "recipe.export_epochs"}
    assert Recipe.names_where("resumable") < set(Recipe.keys()) - set(Recipe.load("cpu").settings())


@pytest.mark.parametrize(
    ("load", "prefix"),
    [(lambda o: Recipe.load("cpu", o), "recipe."), (lambda o: load_cls_config("optdigits", o), "dataset.")],
)
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"warmup_epochs": 50}, "warmup_epochs"),
        ({"opt": "adamww"}, "opt"),
        ({"sched": "cosin"}, "sched"),
        ({"lr": -1}, "lr"),
        ({"scale": [0.9, 0.1]}, "scale"),
        ({"reprob": 2}, "reprob"),
        ({"epochs": "many"}, "epochs"),
    ],
)
def test_recipes_and_dataset_configs_check_their_shared_fields_alike(load, prefix, overrides, field):
    with pytest.raises(UserInputError) as err:
        load(overrides)
    assert err.value.field == prefix + field


def test_dataset_configs_make_whole_numbers_floats_and_recipes_keep_them_as_written():
    """Both as before the settings system: the settings digests of existing records depend on it."""
    assert load_cls_config("optdigits", {"lr": 1}).lr == 1.0 and isinstance(
        load_cls_config("optdigits").scale[0], float
    )
    recipe = Recipe.load("cpu", {"lr": 1})
    assert recipe.lr == 1 and isinstance(recipe.lr, int)


# Computed before the settings system existed: existing records carry these, so a change would orphan them all.
PRETRAIN_DIGESTS = {"regime": "048886321a2c36d4", "recipe": "8ec7498426e44dae"}
CLS_DIGEST = "7212be7a980f072a"
FEATURES_DIGEST = "380a7a36f93c28e4"
CLS_DEFAULTS = "5ba1f82f77b3b547"


def test_shipped_settings_digests_are_those_existing_records_carry():
    from dropbench.core.models import BackboneConfig

    regime, recipe = Regime.load("early_dropout"), Recipe.load("cpu", {"epochs": 2})
    identity = pretrain_identity(BackboneConfig.load("vit_micro"), regime, recipe, "d")
    assert {name: part.digest for name, part in identity.parts.items() if name != "backbone"} == PRETRAIN_DIGESTS
    config = load_cls_config("optdigits", {"epochs": 2, "lr": 1})
    assert task_identity(config, "linear", {"epochs": 2})[2].digest == CLS_DIGEST
    assert settings_digest(config.feature_inputs()) == FEATURES_DIGEST
    assert settings_digest(ClsConfig.from_mapping({"name": "x", "source": "optdigits"}).settings()) == CLS_DEFAULTS


def test_a_schedule_parameter_is_one_field_the_schedule_command_takes():
    parser = argparse.ArgumentParser()
    names = add_arguments(parser, DropSetting, skip=("reference_epochs",))
    args = parser.parse_args(["--rate", "0.2", "--mode", "late", "--cutoff-epoch", "3"])
    assert from_arguments(DropSetting, args, names) == DropSetting(0.2, "late", "constant", 3)
    with pytest.raises(UserInputError) as err:
        from_arguments(DropSetting, parser.parse_args(["--rate", "1.5"]), names)
    assert err.value.field == "--rate"


def test_regimes_read_their_schedules_through_the_same_loader():
    regime = Regime.load("early_dropout")
    assert regime.dropout == DropSetting(0.1, "early", "linear", 50, 300) and regime.drop_path is None
    assert set(regime.settings()) == {"dropout", "drop_path", "train"}
    assert regime.dropout.for_run(30) == DropSetting(0.1, "early", "linear", 5)


def test_a_field_added_after_runs_were_recorded_changes_no_digest_at_its_default_and_is_one_when_set():
    from dropbench.core.models import BackboneConfig

    regime, backbone = Regime.load("early_dropout"), BackboneConfig.load("vit_micro")
    default = pretrain_identity(backbone, regime, Recipe.load("cpu", {"epochs": 2}), "d").parts["recipe"].digest
    assert default == PRETRAIN_DIGESTS["recipe"]
    for changed in ({"val_split": "holdout"}, {"train_eval_images": 500}):
        recipe = Recipe.load("cpu", {"epochs": 2} | changed)
        assert next(iter(changed)) in recipe.settings()
        assert pretrain_identity(backbone, regime, recipe, "d").parts["recipe"].digest != default
