"""Common corruptions: imagecorruptions' 15 types × 5 severities on small grey images, the mCE against a reference,
and ``dropbench eval --corruptions`` against a top-1 computed here from the same corrupted images."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dropbench.core.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt_images,
    corrupted_set,
    corruption_errors,
    mean_corruption_error,
)
from dropbench.core.readers import load_embedded

from .conftest import make_untrained_export


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_embedded("mnist", "test")
    return images[:4], labels[:4]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_keeps_a_small_grey_image_grey_and_its_size_and_is_seeded(digits, corruption):
    images, _ = digits
    once = corrupt_images(images, corruption, 3, seed=0)
    assert once.shape == images.shape and once.dtype == np.uint8
    assert np.array_equal(once, corrupt_images(images, corruption, 3, seed=0))
    assert not np.array_equal(once, images)


def test_a_higher_severity_moves_the_image_further(digits):
    images, _ = digits
    distance = [np.abs(corrupt_images(images, "gaussian_noise", s, 0).astype(int) - images).mean() for s in SEVERITIES]
    assert distance == sorted(distance) and distance[0] < distance[-1]


def test_the_global_numpy_rng_is_left_as_it_was(digits):
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    corrupt_images(digits[0], "shot_noise", 2, 0)
    assert np.random.rand() == expected


def test_mce_is_the_mean_of_the_error_ratios_summed_over_severities():
    top1 = {f"{c}/{s}": 90.0 - 10 * s for c in CORRUPTIONS for s in SEVERITIES}  # errors 20, 30, ..., 60: sum 200
    reference = dict.fromkeys(CORRUPTIONS, 400.0)
    reference[CORRUPTIONS[0]] = 100.0
    errors = corruption_errors(top1)
    assert errors[CORRUPTIONS[1]] == pytest.approx(200.0)
    expected = 100 * (200 / 100 + 14 * 200 / 400) / 15
    assert mean_corruption_error(errors, reference) == pytest.approx(expected)


def test_a_cached_set_is_made_once_and_read_back_the_same(digits, tmp_path):
    made = corrupted_set(digits[0], "mnist", tmp_path, workers=2)
    assert sorted(made) == sorted(f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES)
    (cache,) = tmp_path.glob("*.npz")
    stamp = cache.stat().st_mtime_ns
    again = corrupted_set(digits[0], "mnist", tmp_path, workers=2)
    assert cache.stat().st_mtime_ns == stamp
    assert all(np.array_equal(made[k], again[k]) for k in made)
    assert json.loads(cache.with_suffix(".json").read_text())["images"] == len(digits[0])


def _cells(results) -> dict[str, float]:
    (path,) = (results / "corruptions").glob("*.csv")
    with open(path, newline="") as file:
        return {f"{r['corruption']}/{r['severity']}": float(r["top1"]) for r in csv.DictReader(file)}, path


@pytest.mark.slow
def test_eval_under_corruptions_matches_a_top1_computed_here_and_its_own_mce_is_100(
    cli, exports, tmp_path, monkeypatch
):
    from dropbench.core.corruptions import SEED
    from dropbench.core.export import load_exported_model
    from dropbench.core.transforms import build_transform
    from dropbench.evaluation import eval_transform_settings

    monkeypatch.chdir(tmp_path)  # the corrupted set is cached under ./data/corruptions
    export, count = exports["vit_micro"], 24
    code, _, err = cli("eval", "--backbone", export, "--data", "mnist", "--corruptions", count, "--results", "r")
    assert code == 0, err
    cells, csv_path = _cells(tmp_path / "r")
    records = [json.loads(p.read_text()) for p in (tmp_path / "r" / "records").glob("*.json")]
    values = {r["metric"]: r["value"] for r in records}
    assert {r["protocol"] for r in records} == {"corruptions"} and len(records) == 3 + len(CORRUPTIONS)
    assert values["corrupted_top1"] == pytest.approx(np.mean(list(cells.values())))
    assert values["corruption_drop"] == pytest.approx(values["clean_top1"] - values["corrupted_top1"])

    # one cell, corrupted and classified here with the export's own model and evaluation transform
    images, labels = load_embedded("mnist", "test")
    chosen = np.sort(np.random.default_rng(SEED).choice(len(images), count, replace=False))
    corrupted = corrupt_images(images[chosen], "motion_blur", 4, SEED)
    model, sidecar = load_exported_model(export)
    settings = eval_transform_settings(sidecar, model)
    transform = build_transform(settings, sidecar.image_size, False, mean=settings["mean"], std=settings["std"])
    batch = torch.stack([transform(Image.fromarray(image).convert("RGB")) for image in corrupted])
    with torch.no_grad():
        predicted = model.eval()(batch).argmax(dim=1).numpy()
    assert cells["motion_blur/4"] == pytest.approx(100.0 * np.mean(predicted == labels[chosen]))

    code, _, err = cli(
        "eval", "--backbone", export, "--data", "mnist", "--corruptions", count, "--results", "r2",
        "--mce-reference", csv_path,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "r2" / "records").glob("*.json")]
    values = {r["metric"]: r["value"] for r in records}
    assert values["mce"] == pytest.approx(100.0)


def test_a_reference_of_other_images_is_refused_before_anything_runs(cli, tmp_path):
    reference = tmp_path / "ref.csv"
    rows = [f"mnist,{c},{s},50,90.0" for c in CORRUPTIONS for s in SEVERITIES]
    reference.write_text("dataset,corruption,severity,images,top1\n" + "\n".join(rows) + "\n")
    export = make_untrained_export("vit_micro", tmp_path / "export")
    args = ("eval", "--backbone", export, "--data", "mnist", "--results", tmp_path / "r", "--corruptions")
    code, _, err = cli(*args, 20, "--mce-reference", reference)
    assert code == 2 and "--mce-reference" in err and "20 mnist images" in err
    code, _, err = cli(*args, 20, "--mce-reference", tmp_path / "nope.csv")
    assert code == 2 and "cannot read" in err
    code, _, err = cli("eval", "--backbone", export, "--data", "/tmp", "--corruptions", "20")
    assert code == 2 and "--corruptions" in err
    code, _, err = cli("eval", "--backbone", export, "--data", "mnist", "--mce-reference", reference)
    assert code == 2 and "give --corruptions N too" in err
    flawless = [f"mnist,{c},{s},20,{100.0 if c == 'brightness' else 90.0}" for c in CORRUPTIONS for s in SEVERITIES]
    reference.write_text("dataset,corruption,severity,images,top1\n" + "\n".join(flawless) + "\n")
    code, _, err = cli(*args, 20, "--mce-reference", reference)
    assert code == 2 and "no error under brightness" in err
    reference.write_text(reference.read_text().replace(",90.0", ",ninety", 1))
    code, _, err = cli(*args, 20, "--mce-reference", reference)
    assert code == 2 and "no number" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("layout", ["imagenet-r", "imagenetv2"])
def test_a_set_of_some_imagenet_classes_is_scored_on_those_classes_alone(cli, tmp_path, layout):
    """ImageNet-R's folders are WordNet ids of 200 classes, ImageNet-V2's the indices 0-999: the logits are restricted
    to the classes the set holds (timm's --class-map), computed here from the model's full 1000-way output."""
    from timm.data import ImageNetInfo

    from dropbench.core.export import load_exported_model
    from dropbench.core.transforms import build_transform
    from dropbench.evaluation import eval_transform_settings

    synsets = ImageNetInfo("imagenet-1k").label_names()
    indices = [7, 94, 311]
    root = tmp_path / layout
    rng = np.random.default_rng(0)
    files = []
    for index in indices:
        (root / (synsets[index] if layout == "imagenet-r" else str(index))).mkdir(parents=True)
        for k in range(3):
            path = root / (synsets[index] if layout == "imagenet-r" else str(index)) / f"{k}.png"
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
            files.append((path, index))
    export = make_untrained_export("vit_micro", tmp_path / "export", classes=1000)
    code, _, err = cli("eval", "--backbone", export, "--data", root, "--results", tmp_path / "r", "--workers", "0")
    assert code == 0, err
    values = {
        json.loads(p.read_text())["metric"]: json.loads(p.read_text())["value"]
        for p in (tmp_path / "r" / "records").glob("*.json")
    }
    model, sidecar = load_exported_model(export)
    settings = eval_transform_settings(sidecar, model)
    transform = build_transform(settings, sidecar.image_size, False, mean=settings["mean"], std=settings["std"])
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in files])
    with torch.no_grad():
        logits = model.eval()(batch)
    predicted = torch.tensor(indices)[logits[:, indices].argmax(dim=1)]
    truth = torch.tensor([index for _, index in files])
    assert values["top1"] == pytest.approx(100.0 * predicted.eq(truth).double().mean().item())
    unrestricted = 100.0 * logits.argmax(dim=1).eq(truth).double().mean().item()
    assert values["top1"] != pytest.approx(unrestricted)  # the restriction is what scores it
    assert {json.loads(p.read_text())["dataset"] for p in (tmp_path / "r" / "records").glob("*.json")} == {layout}


def test_class_folders_that_are_no_imagenet_classes_are_refused(cli, tmp_path):
    (tmp_path / "set" / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "set" / "cats" / "a.png")
    export = make_untrained_export("vit_micro", tmp_path / "export", classes=1000)
    code, _, err = cli("eval", "--backbone", export, "--data", tmp_path / "set", "--results", tmp_path / "r")
    assert code == 2 and "'cats'" in err and "val/<class>/" in err


@pytest.mark.slow
def test_a_fine_tuned_classifier_is_measured_under_corruptions_on_its_test_images(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = ["train_subset=64", "test_subset=40", "batch_size=32", "epochs=1", "warmup_epochs=0", "corruptions=12"]
    args = ["transfer", "cls", "--backbone", exports["vit_micro"], "--dataset", "sklearn_digits"]
    results = tmp_path / "results"
    code, _, err = cli(*args, "--protocol", "finetune", "--work-dir", "work", "--results", results, *tiny)
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    records = {record["metric"]: record for record in records}
    with open(tmp_path / "work" / "corruptions.csv", newline="") as file:
        cells = [float(row["top1"]) for row in csv.DictReader(file)]
    assert len(cells) == 75 and records["corrupted_top1"]["value"] == pytest.approx(np.mean(cells))
    assert records["corruption_drop"]["unit"] == "points" and records["top1"]["protocol"] == "finetune"
    assert records["corruption_drop"]["value"] == pytest.approx(
        records["clean_top1"]["value"] - records["corrupted_top1"]["value"]
    )
    with open(tmp_path / "work" / "corruptions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for corruption in CORRUPTIONS:
        own = [float(row["top1"]) for row in rows if row["corruption"] == corruption]
        assert len(own) == 5 and records[f"top1_{corruption}"]["value"] == pytest.approx(np.mean(own))
    code, _, err = cli(*args, "--protocol", "linear", "--work-dir", "w2", "--results", results, *tiny)
    assert code == 2 and "dataset.corruptions" in err and "'linear'" in err


@pytest.mark.slow
def test_corruption_evaluations_of_other_settings_are_kept_apart_in_the_table(cli, exports, tmp_path, monkeypatch):
    """Two numbers of corrupted images are two experiments: two columns, never one cell of n = 2."""
    monkeypatch.chdir(tmp_path)
    for count in ("8", "10"):
        code, _, err = cli(
            "eval", "--backbone", exports["vit_micro"], "--data", "mnist", "--corruptions", count, "--results", "r"
        )
        assert code == 0, err
    code, table, err = cli("compare", "--results", "r", "--format", "csv")
    assert code == 0, err
    rows = [row for row in csv.DictReader(table.splitlines()) if row["metric"] == "corrupted_top1"]
    assert len(rows) == 2 and len({row["protocol"] for row in rows}) == 2 and {row["n"] for row in rows} == {"1"}
