import csv
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dropbench.core.errors import UserInputError
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.diagnostics import DiagnosticsConfig, DirectionStats, cosine_distance
from dropbench.pretrain.train import pretrain


def _brute_force_gdv(gradients: list[torch.Tensor]) -> float:
    pairs = list(itertools.combinations(gradients, 2))
    return sum(cosine_distance(u, v) for u, v in pairs) / len(pairs)


def test_gdv_of_identical_gradients_is_zero():
    g = torch.randn(1000)
    stats = DirectionStats()
    for scale in (1.0, 2.0, 0.5, 7.0):
        stats.add(g * scale)
    assert stats.gdv == pytest.approx(0.0, abs=1e-12)


def test_gdv_of_orthogonal_gradients_is_one_half():
    stats = DirectionStats()
    for i in range(5):
        stats.add(torch.eye(5)[i] * (i + 1))
    assert stats.gdv == pytest.approx(0.5)


def test_streamed_gdv_equals_the_mean_over_all_pairs():
    gradients = [torch.randn(300) + 0.5 for _ in range(9)]
    stats = DirectionStats()
    for g in gradients:
        stats.add(g)
    assert stats.gdv == pytest.approx(_brute_force_gdv(gradients), rel=1e-9)


def test_gde_is_zero_when_every_gradient_is_parallel_to_the_full_gradient_and_grows_otherwise():
    full = torch.randn(500)
    parallel = DirectionStats(reference=full)
    for scale in (0.1, 1.0, 3.0):
        parallel.add(full * scale)
    assert parallel.gde == pytest.approx(0.0, abs=1e-12)
    noisy = DirectionStats(reference=full)
    for _ in range(3):
        noisy.add(full + torch.randn(500))
    assert 0.0 < noisy.gde < 0.5
    opposite = DirectionStats(reference=full)
    opposite.add(-full)
    assert opposite.gde == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("items", "field"),
    [
        (["every=0"], "--diagnostics"),
        (["batches=1"], "batches"),
        (["every=ten"], "every"),
        (["often=3"], "--diagnostics"),
    ],
)
def test_bad_diagnostics_settings_name_the_field(items, field):
    with pytest.raises(UserInputError) as err:
        DiagnosticsConfig.parse(items)
    assert field in err.value.field


# Two runs from the same seed, with and without measuring, must end with identical weights.
TINY = dict(epochs=2, batch_size=64, per_device_batch=64, train_subset=1024, val_subset=128, warmup_epochs=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnostics")
    backbone, recipe = BackboneConfig.load("vit_micro"), Recipe.load("cpu", TINY)
    made = {}
    for regime in ("no_dropout", "standard_dropout"):
        made[regime] = root / regime
        pretrain(
            backbone,
            Regime.load(regime),
            recipe,
            "mnist",
            made[regime],
            results_dir=None,
            diagnostics=DiagnosticsConfig(every=4, batches=3, full=128),
        )
    made["unmeasured"] = root / "unmeasured"
    pretrain(backbone, Regime.load("standard_dropout"), recipe, "mnist", made["unmeasured"], results_dir=None)
    return made


@pytest.mark.slow
def test_measuring_does_not_change_the_training_trajectory(runs):
    measured = load_file(runs["standard_dropout"] / "export" / "backbone.safetensors")
    unmeasured = load_file(runs["unmeasured"] / "export" / "backbone.safetensors")
    for name, tensor in measured.items():
        assert torch.equal(tensor, unmeasured[name]), name


@pytest.mark.slow
def test_diagnostics_are_logged_at_the_cadence_with_sane_values(runs):
    with (runs["standard_dropout"] / "diagnostics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["update"]) for r in rows] == list(range(0, 32, 4))  # 16 updates per epoch, 2 epochs
    first, last = rows[0], rows[-1]
    assert float(first["model_distance"]) == 0.0 < float(last["model_distance"])
    for row in rows:
        assert 0.0 < float(row["gdv"]) < 1.0 and 0.0 < float(row["gde"]) < 1.0
        assert float(row["grad_norm"]) > 0 and float(row["dropout"]) == pytest.approx(0.1)


@pytest.mark.slow
def test_the_plot_command_draws_one_png_per_metric_from_real_runs(cli, runs, tmp_path):
    code, out, err = cli("plot", "diagnostics", runs["no_dropout"], runs["standard_dropout"], "--out", tmp_path)
    assert code == 0, err
    for metric in ("grad_norm", "model_distance", "gdv", "gde"):
        with Image.open(tmp_path / f"diagnostics_{metric}.png") as image:
            assert image.format == "PNG" and image.width >= 600
    code, _, err = cli("plot", "diagnostics", runs["unmeasured"], "--out", tmp_path)
    assert code == 2 and "diagnostics.csv" in err


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_its_diagnostics_where_they_were(runs, tmp_path):
    """Killed after its first checkpoint and resumed: the same measurements and weights as the uninterrupted run."""
    run = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "dropbench.cli", "pretrain", "--backbone", "vit_micro"),
        *("--regime", "standard_dropout", "--recipe", "cpu", "--data", "mnist", "--out", str(run)),
        *("--results", str(tmp_path / "results"), *(f"{k}={v}" for k, v in TINY.items())),
        *("--diagnostics", "every=4", "batches=3", "full=128"),
    ]
    env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # the fixture's reduction order
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr

    def rows(folder):
        with (folder / "diagnostics.csv").open() as f:
            return list(csv.DictReader(f))

    assert rows(run) == rows(runs["standard_dropout"])
    expected = load_file(runs["standard_dropout"] / "export" / "backbone.safetensors")
    for name, tensor in load_file(run / "export" / "backbone.safetensors").items():
        assert torch.equal(tensor, expected[name]), name


class _CountedImages(torch.utils.data.Dataset):
    """Random images that count how often each is read."""

    def __init__(self, count: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 10, (count,), generator=generator)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.images[index], self.labels[index]


@pytest.mark.parametrize("kept", [True, False])
def test_the_fixed_images_are_read_once_per_run_where_they_fit_and_measure_the_same_either_way(monkeypatch, kept):
    """ĝ's images and the K mini-batches are one draw, read once per measurement, and only once in all where they
    fit in memory; the K gradients' dropout masks are the same whether a measurement reads the images or not."""
    from contextlib import nullcontext

    import dropbench.pretrain.diagnostics as diagnostics

    if not kept:
        monkeypatch.setattr(diagnostics, "CACHE_BYTES", 0)
    config, batch = DiagnosticsConfig(every=1, batches=3, full=40), 16  # K = 3 batches (48 images) reach past ĝ's 40
    torch.manual_seed(0)
    model = BackboneConfig.load("vit_micro").create_model(10, dropout=0.1)
    images = _CountedImages(100)
    probe = diagnostics.GradientDiagnostics(
        config, model, images, batch, torch.nn.CrossEntropyLoss(), torch.device("cpu"), 0, nullcontext
    )
    torch.manual_seed(1)
    measured = [probe.measure() for _ in range(3)]
    assert images.reads == 48 * (1 if kept else 3) + 1  # and one image read, once, to size the set
    assert measured[0] == measured[1] == measured[2], "the RNG the dropout masks draw from is left as it was"

    # the same numbers computed here: ĝ from the first 40 images in eval mode, then 3 batches of 16 in train mode
    order = torch.randperm(100, generator=torch.Generator().manual_seed(7_919)).tolist()
    loss = torch.nn.CrossEntropyLoss()
    model.eval()
    full = sum(
        diagnostics.flat_gradient(model, loss(model(images.images[chunk]), images.labels[chunk])) * len(chunk)
        for chunk in (order[0:16], order[16:32], order[32:40])
    )
    torch.manual_seed(1)
    model.train()
    stats = DirectionStats(reference=full / 40)
    for k in range(3):
        chunk = order[16 * k : 16 * (k + 1)]
        stats.add(diagnostics.flat_gradient(model, loss(model(images.images[chunk]), images.labels[chunk])))
    assert measured[0]["gdv"] == pytest.approx(stats.gdv, rel=1e-6)
    assert measured[0]["gde"] == pytest.approx(stats.gde, rel=1e-6)
