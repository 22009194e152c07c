import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dropbench.core.errors import UserInputError
from dropbench.pretrain.schedules import SHAPES_BY_MODE, drop_schedule


def test_early_linear_decays_to_zero_at_the_cutoff_then_stays_off():
    rates = drop_schedule(0.1, epochs=10, iters_per_epoch=7, cutoff_epoch=3, mode="early", shape="linear")
    assert rates.shape == (70,)
    early = rates[:21]
    assert early[0] == pytest.approx(0.1) and early[-1] == 0.0
    np.testing.assert_allclose(np.diff(early), -0.1 / 20)  # equal steps: linear from 0.1 to 0 in 21 points
    assert np.all(rates[21:] == 0)


def test_early_constant_and_late_constant_switch_exactly_at_the_cutoff():
    early = drop_schedule(0.2, 5, 4, cutoff_epoch=2, mode="early", shape="constant")
    late = drop_schedule(0.2, 5, 4, cutoff_epoch=2, mode="late", shape="constant")
    assert early.tolist() == [0.2] * 8 + [0.0] * 12
    assert late.tolist() == [0.0] * 8 + [0.2] * 12


def test_standard_is_constant_for_the_whole_run():
    assert drop_schedule(0.1, 3, 5).tolist() == [0.1] * 15


def test_whole_run_ablation_modes_ramp_between_zero_and_the_rate():
    up = drop_schedule(0.3, 4, 5, mode="curriculum", shape="linear")
    down = drop_schedule(0.3, 4, 5, mode="annealed", shape="linear")
    assert up[0] == 0 and up[-1] == pytest.approx(0.3) and np.all(np.diff(up) > 0)
    np.testing.assert_allclose(down, up[::-1])


def _reference(rate, epochs, iters, cutoff, mode, shape) -> list[float]:
    """The paper's schedule semantics, written out element by element (an oracle independent of the code)."""
    total, on = epochs * iters, cutoff * iters
    if mode == "standard":
        return [rate] * total
    if mode == "late":
        return [0.0] * on + [rate] * (total - on)
    if shape == "constant" or on == 1:
        head = [rate] * on
    else:
        head = [rate * (1 - i / (on - 1)) for i in range(on)]
    return head + [0.0] * (total - on)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-1.0, 2.0, allow_nan=False),
    st.integers(0, 30),
    st.integers(0, 12),
    st.sampled_from(["standard", "early", "late"]),
    st.sampled_from(["constant", "linear"]),
    st.data(),
)
def test_every_input_of_the_reference_scheduler_gives_its_array(rate, epochs, iters, mode, shape, data):
    """Whatever the authors' drop_scheduler accepts: a cutoff of 0 (early: never on; late: standard), a cutoff at
    the last epoch, any shape under standard (it is ignored), rates outside [0, 1), empty runs."""
    if mode == "late":
        shape = "constant"
    cutoff = data.draw(st.integers(0, epochs)) if mode != "standard" else data.draw(st.integers(-5, 50))
    rates = drop_schedule(rate, epochs, iters, cutoff, mode, shape)
    np.testing.assert_allclose(rates, _reference(rate, epochs, iters, cutoff, mode, shape), atol=1e-12)
    assert rates.dtype == np.float64


def test_a_cutoff_of_zero_is_never_on_for_early_and_always_on_for_late():
    assert drop_schedule(0.1, 3, 2, 0, "early", "linear").tolist() == [0.0] * 6
    assert drop_schedule(0.1, 3, 2, 0, "late").tolist() == drop_schedule(0.1, 3, 2).tolist()


def test_cosine_early_starts_at_the_rate_ends_at_zero_and_stays_above_linear_in_its_first_half():
    cosine = drop_schedule(0.1, 6, 10, cutoff_epoch=3, mode="early", shape="cosine")
    linear = drop_schedule(0.1, 6, 10, cutoff_epoch=3, mode="early", shape="linear")
    assert cosine[0] == pytest.approx(0.1) and cosine[29] == pytest.approx(0.0, abs=1e-12)
    assert np.all(cosine[1:15] > linear[1:15]) and np.all(cosine[30:] == 0)
    assert np.all(np.diff(cosine[:30]) < 0)


settings_strategy = st.tuples(st.floats(0.0, 0.99), st.integers(1, 40), st.integers(1, 30), st.data())


@settings(max_examples=200, deadline=None)
@given(settings_strategy)
def test_every_schedule_has_one_rate_per_iteration_within_zero_and_the_rate(args):
    rate, epochs, ipe, data = args
    mode = data.draw(st.sampled_from(sorted(SHAPES_BY_MODE)))
    shape = data.draw(st.sampled_from(SHAPES_BY_MODE[mode]))
    cutoff = data.draw(st.integers(0, epochs))
    rates = drop_schedule(rate, epochs, ipe, cutoff, mode, shape)
    assert rates.shape == (epochs * ipe,)
    assert np.all(rates >= 0) and np.all(rates <= rate + 1e-12)
    boundary = cutoff * ipe
    if mode == "early":
        assert np.all(rates[boundary:] == 0)
        assert cutoff == 0 or rates[0] == pytest.approx(rate)
        assert np.all(np.diff(rates) <= 1e-12)  # never rises
    elif mode == "late":
        assert np.all(rates[:boundary] == 0) and np.all(rates[boundary:] == rate)
    elif mode == "standard":
        assert np.all(rates == rate)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(rate=float("nan")), "rate"),
        (dict(mode="early", shape="linear", cutoff_epoch=11), "cutoff_epoch"),
        (dict(mode="late", shape="constant", cutoff_epoch=-1), "cutoff_epoch"),
        (dict(mode="late", shape="linear", cutoff_epoch=2), "shape"),
        (dict(mode="curriculum", shape="constant"), "shape"),
        (dict(epochs=-1), "epochs"),
        (dict(mode="sometimes"), "mode"),
    ],
)
def test_bad_schedule_arguments_name_their_field(kwargs, field):
    args = dict(rate=0.1, epochs=10, iters_per_epoch=7) | kwargs
    with pytest.raises(UserInputError) as err:
        drop_schedule(**args)
    assert err.value.field == field


def test_schedule_command_prints_the_rates_as_json(cli):
    code, out, _ = cli(
        "schedule",
        "--mode",
        "early",
        "--shape",
        "linear",
        "--rate",
        "0.1",
        "--epochs",
        "10",
        "--iters-per-epoch",
        "7",
        "--cutoff-epoch",
        "3",
        "--format",
        "json",
    )
    assert code == 0
    assert json.loads(out) == pytest.approx(drop_schedule(0.1, 10, 7, 3, "early", "linear").tolist())


def test_schedule_command_plots_a_png(cli, tmp_path):
    out = tmp_path / "schedule.png"
    code, _, _ = cli(
        "schedule",
        "--mode",
        "late",
        "--rate",
        "0.4",
        "--epochs",
        "30",
        "--iters-per-epoch",
        "5",
        "--cutoff-epoch",
        "5",
        "--format",
        "png",
        "--out",
        out,
    )
    assert code == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 300


def test_schedule_command_rejects_a_cutoff_beyond_the_last_epoch_in_one_line(cli):
    code, out, err = cli(
        "schedule",
        "--mode",
        "early",
        "--shape",
        "linear",
        "--rate",
        "0.1",
        "--epochs",
        "10",
        "--iters-per-epoch",
        "7",
        "--cutoff-epoch",
        "12",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "cutoff_epoch" in err


@pytest.mark.parametrize("rate", ["1.5", "1.0", "-0.1", "nan"])
def test_schedule_command_rejects_a_rate_outside_zero_to_one_in_one_line(cli, rate):
    code, out, err = cli("schedule", "--mode", "early", "--rate", rate, "--epochs", "10", "--iters-per-epoch", "7")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--rate" in err and "[0, 1)" in err


@pytest.mark.parametrize("rate", ["1.5", "-0.1"])
def test_the_schedule_command_names_the_option_of_a_rate_that_is_no_probability(cli, rate):
    code, out, err = cli("schedule", "--rate", rate, "--epochs", "10", "--iters-per-epoch", "7")
    assert code == 2 and out == "" and err.startswith("error: --rate: ") and err.count("\n") == 1, err
