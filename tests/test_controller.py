import numpy as np
import pytest
import torch

from dropbench.core.errors import UserInputError
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Regime
from dropbench.pretrain.controller import DropController, TensorRateDrop, drop_modules
from dropbench.pretrain.schedules import drop_schedule

from .conftest import MICRO_BACKBONES


def _build(name: str, **rates):
    torch.manual_seed(0)
    return BackboneConfig.load(name).create_model(num_classes=10, **rates)


def _controlled(name: str, schedules: dict) -> tuple[torch.nn.Module, DropController]:
    """The backbone built at the schedules' maximum rates, with its controller (and its drop-path rule)."""
    backbone = BackboneConfig.load(name)
    torch.manual_seed(0)
    model = backbone.create_model(num_classes=10, **{kind: rate for kind, (_, rate) in schedules.items()})
    return model, DropController(model, schedules, backbone.drop_path_rule)


def _assert_scaled(controller: DropController, kind: str, rate: float, max_rate: float):
    pairs = controller.module_rates()[kind]
    assert pairs, f"no {kind} modules"
    for base, current in pairs:
        assert current == pytest.approx(base * rate / max_rate, abs=1e-12)


@pytest.mark.parametrize("backbone", MICRO_BACKBONES)
def test_stochastic_depth_of_every_block_follows_the_schedule_times_its_base(backbone):
    rates = drop_schedule(0.5, epochs=4, iters_per_epoch=5, cutoff_epoch=2, mode="early", shape="linear")
    _, controller = _controlled(backbone, {"drop_path": (rates, 0.5)})
    bases = [base for base, _ in controller.module_rates()["drop_path"]]
    assert len(set(np.round(bases, 9))) > 1, "timm's per-block rule gives blocks different bases"
    for iteration in (0, 3, 9, 10, 19):
        controller.step(iteration)
        _assert_scaled(controller, "drop_path", rates[iteration], 0.5)


def test_vit_stochastic_depth_keeps_timms_linear_per_block_rule():
    model = _build("vit_micro", drop_path=0.4)
    controller = DropController(model, {"drop_path": (np.full(3, 0.2), 0.4)})
    controller.step(0)
    depth = len(model.blocks)
    expected = torch.linspace(0, 0.2, depth).tolist()
    for i, block in enumerate(model.blocks):
        actual = getattr(block.drop_path1, "drop_prob", 0.0)
        assert actual == pytest.approx(expected[i], abs=1e-7)


@pytest.mark.parametrize("backbone", ["vit_micro", "swin_micro", "mixer_micro"])
def test_dropout_of_every_module_follows_the_schedule(backbone):
    rates = drop_schedule(0.1, epochs=3, iters_per_epoch=4, cutoff_epoch=1, mode="early", shape="linear")
    _, controller = _controlled(backbone, {"dropout": (rates, 0.1)})
    assert len(controller.module_rates()["dropout"]) >= 4
    for iteration in range(len(rates)):
        controller.step(iteration)
        _assert_scaled(controller, "dropout", rates[iteration], 0.1)


@pytest.mark.parametrize("backbone", MICRO_BACKBONES)
def test_late_stochastic_depth_starts_at_zero_with_the_modules_present(backbone):
    regime = Regime.load("late_sd")
    rates = regime.drop_path.rates(epochs=6, iters_per_epoch=3)
    _, controller = _controlled(backbone, {"drop_path": (rates, regime.drop_path.rate)})
    controller.step(0)
    pairs = controller.module_rates()["drop_path"]
    assert pairs and all(current == 0 for _, current in pairs)
    controller.step(len(rates) - 1)
    assert all(current == pytest.approx(base) for base, current in controller.module_rates()["drop_path"])


def test_the_linear_rule_rebases_mixer_blocks_to_the_papers_linspace():
    model, controller = _controlled("mixer_micro", {"drop_path": (np.full(2, 0.4), 0.4)})
    assert {m.drop_prob for m in (b.drop_path for b in model.blocks)} == {0.4}, "timm's Mixer rule is uniform"
    controller.step(0)
    expected = np.linspace(0, 0.4, len(model.blocks))
    np.testing.assert_allclose([b.drop_path.drop_prob for b in model.blocks], expected)


def test_a_model_without_dropout_in_its_blocks_is_refused_with_a_hint():
    model = _build("convnext_micro", dropout=0.1)  # only the classifier head gets a dropout
    with pytest.raises(UserInputError, match="stochastic depth"):
        DropController(model, {"dropout": (np.full(4, 0.1), 0.1)})


def test_dropout_and_stochastic_depth_are_scheduled_independently():
    model = _build("vit_micro", dropout=0.1, drop_path=0.3)
    dropout = drop_schedule(0.1, 4, 2, 2, "early", "linear")
    drop_path = drop_schedule(0.3, 4, 2, 2, "late", "constant")
    controller = DropController(model, {"dropout": (dropout, 0.1), "drop_path": (drop_path, 0.3)})
    for iteration in range(8):
        controller.step(iteration)
        _assert_scaled(controller, "dropout", dropout[iteration], 0.1)
        _assert_scaled(controller, "drop_path", drop_path[iteration], 0.3)


@pytest.mark.parametrize("kind", ["dropout", "drop_path"])
def test_the_rate_the_controller_sets_is_the_rate_the_forward_pass_uses(kind):
    model = _build("vit_micro", **{kind: 0.3}).train()
    controller = DropController(model, {kind: (np.array([0.3, 0.0]), 0.3)})
    images = torch.randn(4, 3, 32, 32)
    controller.step(0)
    with torch.no_grad():
        assert not torch.equal(model(images), model(images)), "active dropout makes passes differ"
    controller.step(1)
    with torch.no_grad():
        assert torch.equal(model(images), model(images)), "rate 0 makes training passes deterministic"


def test_modules_built_at_rate_zero_are_not_scheduled():
    model = _build("vit_micro", drop_path=0.2)
    assert drop_modules(model, "dropout") == []


@pytest.mark.parametrize("backbone", MICRO_BACKBONES)
def test_no_dropout_builds_no_active_drop_module_even_where_timm_defaults_to_one(backbone):
    model = _build(backbone)  # timm's Swin defaults to drop_path_rate=0.1
    assert drop_modules(model, "dropout") == [] and drop_modules(model, "drop_path") == []


def _block_count(model: torch.nn.Module) -> int:
    stages = getattr(model, "stages", None) or getattr(model, "layers", None)  # ConvNeXt, Swin
    return sum(len(stage.blocks) for stage in stages) if stages is not None else len(model.blocks)


def _drop_modules_by_type(model: torch.nn.Module, kind: str) -> list[torch.nn.Module]:
    """The modules timm built with a non-zero rate, found by type (not through the controller), in model order."""
    from timm.layers import DropPath

    if kind == "dropout":
        return [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    return [m for m in model.modules() if isinstance(m, DropPath) and m.drop_prob > 0]


def _held(modules: list[torch.nn.Module]) -> list[float]:
    return [float(getattr(m, "p", getattr(m, "drop_prob", None))) for m in modules]


@pytest.mark.parametrize("backbone", MICRO_BACKBONES)
def test_stochastic_depth_is_linspace_over_all_blocks_then_scaled_each_iteration(backbone):
    """Whatever the controller records, each block's DropPath must hold ``linspace(0, 0.3, blocks)[block]`` times
    the schedule's fraction of the maximum (timm's rule; the linear rule gives Mixer the same)."""
    rates = drop_schedule(0.3, epochs=4, iters_per_epoch=3, cutoff_epoch=2, mode="early", shape="linear")
    backbone_config = BackboneConfig.load(backbone)
    torch.manual_seed(0)
    model = backbone_config.create_model(num_classes=10, drop_path=0.3)
    modules = _drop_modules_by_type(model, "drop_path")
    per_block = np.linspace(0, 0.3, _block_count(model))
    if backbone_config.drop_path_rule == "timm":
        per_block = per_block[1:]  # block 0 has rate 0: timm builds no DropPath there
    expected = np.repeat(per_block, len(modules) // len(per_block))
    controller = DropController(model, {"drop_path": (rates, 0.3)}, backbone_config.drop_path_rule)
    for iteration in (0, 1, 5, 8, 11):
        controller.step(iteration)
        np.testing.assert_allclose(_held(modules), expected * rates[iteration] / 0.3, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backbone", ["vit_micro", "swin_micro", "mixer_micro"])
def test_every_dropout_module_holds_the_scheduled_rate(backbone):
    rates = drop_schedule(0.1, epochs=3, iters_per_epoch=4, cutoff_epoch=2, mode="early", shape="linear")
    torch.manual_seed(0)
    model = BackboneConfig.load(backbone).create_model(num_classes=10, dropout=0.1)
    modules = _drop_modules_by_type(model, "dropout")
    assert len(modules) >= 4 and _held(modules) == pytest.approx([0.1] * len(modules))
    controller = DropController(model, {"dropout": (rates, 0.1)})
    for iteration in (0, 3, 7, 11):
        controller.step(iteration)
        assert _held(modules) == pytest.approx([rates[iteration]] * len(modules), abs=1e-12)


def _tensor_rate_vit(**rates) -> tuple[torch.nn.Module, DropController]:
    model = _build("vit_micro", **rates).train()
    schedules = {kind: (np.r_[np.linspace(rate, rate / 2, 6), np.zeros(4)], rate) for kind, rate in rates.items()}
    return model, DropController(model, schedules, tensor_rates=True)


def test_tensor_rate_twins_take_the_place_of_every_scheduled_module_and_leave_the_state_dict_alone():
    keys = set(_build("vit_micro", dropout=0.2, drop_path=0.2).state_dict())
    model, controller = _tensor_rate_vit(dropout=0.2, drop_path=0.2)
    assert set(model.state_dict()) == keys
    assert _drop_modules_by_type(model, "dropout") == [] and _drop_modules_by_type(model, "drop_path") == []
    assert all(not block.attn.fused_attn for block in model.blocks), "the fused kernel would read a float rate"
    controller.step(3)
    for kind, rate in controller.current_rates().items():
        for base, current in controller.module_rates()[kind]:
            assert current == pytest.approx(base * rate / 0.2, abs=1e-7)  # a float32 buffer


@pytest.mark.parametrize("kind", ["dropout", "drop_path"])
def test_a_tensor_rate_twin_drops_at_its_rate_and_keeps_the_expectation(kind):
    model, _ = _tensor_rate_vit(**{kind: 0.3})
    twin = [module for module in model.modules() if isinstance(module, TensorRateDrop)][-1]
    twin.rate.fill_(0.3)
    x = torch.ones(4000, 8, 4)
    out = twin(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.03)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)
    whole_samples = ((out == 0).all(dim=(1, 2)) | (out != 0).all(dim=(1, 2))).all().item()
    assert whole_samples == (kind == "drop_path"), "stochastic depth drops samples, dropout elements"
    assert torch.equal(twin.eval()(x), x)
    twin.train().rate.fill_(0.0)
    assert torch.equal(twin(x), x)


@pytest.mark.slow
def test_a_compiled_model_is_not_recompiled_when_its_rates_change():
    from torch._dynamo.utils import counters

    def graphs_per_step(tensor_rates: bool, steps: int) -> list[int]:
        torch._dynamo.reset()
        counters.clear()
        model = _build("vit_micro", dropout=0.1, drop_path=0.1).train()
        rates = np.r_[np.linspace(0.1, 0.05, 6), np.zeros(3)]
        controller = DropController(
            model, {"dropout": (rates, 0.1), "drop_path": (rates, 0.1)}, tensor_rates=tensor_rates
        )
        compiled = torch.compile(model, backend="aot_eager")
        counts = []
        for iteration in range(steps):
            controller.step(iteration)
            compiled(torch.randn(4, 3, 32, 32)).sum().backward()
            counts.append(counters["stats"]["unique_graphs"])
        return counts

    assert graphs_per_step(tensor_rates=True, steps=9) == [1] * 9, "rates falling to 0, then 0"
    assert graphs_per_step(tensor_rates=False, steps=3) == [1, 2, 3], "float rates do recompile: the check can fail"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kinds"), [("vit_micro", ("dropout", "drop_path")), ("convnext_micro", ("drop_path",))]
)
def test_inductor_compiles_one_graph_without_breaks_while_the_rates_change(name, kinds):
    """What a GPU run compiles with: inductor (aot_eager alone would not see inductor's own guards), forward and
    backward, over steps whose rates change every iteration."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _build(name, **{kind: 0.1 for kind in kinds}).train()
    rates = np.linspace(0.1, 0.0, 4)
    controller = DropController(model, {kind: (rates, 0.1) for kind in kinds}, tensor_rates=True)
    compiled = torch.compile(model, backend="inductor")
    for iteration in range(4):
        controller.step(iteration)
        compiled(torch.randn(2, 3, 32, 32)).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
