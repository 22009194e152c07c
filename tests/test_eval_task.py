"""The ``eval`` task: an export's classifier evaluated as it is, run by a suite on every export (once: it takes no
transfer seed) with the records ``dropbench eval`` writes, and ImageNet-C's own folder layout scored cell by cell."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dropbench.core.corruptions import CORRUPTIONS, SEVERITIES
from dropbench.core.identity import ResultRecord

from .conftest import make_untrained_export


def _records(folder) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))]


def _val_folder(root) -> str:
    """Two MNIST test digits of each class as ``val/<class>/<image>.png``."""
    from dropbench.core.readers import load_embedded

    images, labels = load_embedded("mnist", "test")
    for digit in range(10):
        (root / "val" / str(digit)).mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(labels == digit)[:2]):
            Image.fromarray(images[index]).save(root / "val" / str(digit) / f"{k}.png")
    return str(root)


@pytest.mark.slow
def test_a_suite_evaluates_each_export_once_with_the_records_dropbench_eval_writes(cli, tmp_path, monkeypatch):
    from dropbench.suite import load_suite

    monkeypatch.chdir(tmp_path)  # the corrupted set is cached under ./data/corruptions
    export = make_untrained_export("vit_micro", tmp_path / "export")
    digits = _val_folder(tmp_path / "digits")
    entries = [{"kind": "eval", "data": digits, "workers": 0}, {"kind": "eval", "data": "mnist", "corruptions": 6}]
    output = {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results")}
    suite = tmp_path / "evals.yaml"
    plan = {"exports": [str(export)], "transfers": entries, "transfer_seeds": [0, 1], "output": output}
    suite.write_text(yaml.safe_dump(plan))

    runs = load_suite(suite).runs
    assert [run.name.rpartition("/")[2] for run in runs] == ["eval-digits", "eval-mnist-corruptions"]
    assert [run.command[:2] for run in runs] == [("transfer", "eval")] * 2
    code, out, err = cli("suite", suite, "--dry-run")
    assert code == 0 and "each with 2 transfer(s): 2 runs, 0 finished" in out.splitlines()[0], out + err
    code, out, err = cli("suite", suite)
    assert code == 0, err
    assert all(run.finished() for run in runs), "each run wrote the records its plan names"
    for run in runs:
        records = [ResultRecord(**json.loads(path.read_text())) for path in run.records()]
        assert all(record.identity() == run.identity and record.stage == "eval" for record in records)
    values = {(r["protocol"], r["metric"]): r["value"] for r in _records(tmp_path / "results")}
    assert {("val", "top1"), ("val", "ece"), ("corruptions", "corrupted_top1")} <= values.keys()

    # the same evaluation asked for on the command line is the same run: its records replace the suite's
    code, _, err = cli("eval", "--backbone", export, "--data", digits, "--workers", "0", "--results", "direct")
    assert code == 0, err
    direct = {path.name for path in (tmp_path / "direct" / "records").glob("*.json")}
    assert direct == {path.name for path in runs[0].records()}
    by_name = {r["metric"]: r["value"] for r in _records(tmp_path / "direct")}
    assert by_name["top1"] == values[("val", "top1")] and by_name["nll"] == values[("val", "nll")]

    code, out, err = cli("compare", "--results", tmp_path / "results", "--format", "csv")
    assert code == 0, err
    assert "digits,val,top1" in out and "mnist,corruptions,corrupted_top1" in out


def test_an_eval_entry_is_checked_before_anything_runs(cli, tmp_path):
    export = make_untrained_export("vit_micro", tmp_path / "export")
    output = {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results")}
    for entry, field in [
        ({"kind": "eval"}, "transfers[0].data"),
        ({"kind": "eval", "data": "mnist", "corruptions": "many"}, "transfers[0].corruptions"),
        ({"kind": "eval", "data": "mnist", "corruptions": 10**6}, "transfers[0].corruptions"),
        ({"kind": "eval", "data": "mnist", "mce_reference": "ref.csv"}, "transfers[0].mce_reference"),
        ({"kind": "eval", "data": str(tmp_path / "nowhere")}, "transfers[0].data"),
        ({"kind": "eval", "data": "mnist", "shots": 5}, "transfers[0].shots"),
    ]:
        suite = tmp_path / "evals.yaml"
        suite.write_text(yaml.safe_dump({"exports": [str(export)], "transfers": [entry], "output": output}))
        code, _, err = cli("suite", suite, "--dry-run")
        assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {field}"), (entry, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def _imagenet_c(root, indices: list[int]) -> dict[str, list]:
    """ImageNet-C's layout, ``<corruption>/<severity>/<wnid>/``, with two random images per class and cell."""
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo("imagenet-1k").label_names()
    rng, files = np.random.default_rng(0), {}
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            cell = files.setdefault(f"{corruption}/{severity}", [])
            for index in indices:
                folder = root / corruption / str(severity) / synsets[index]
                folder.mkdir(parents=True)
                for k in range(2):
                    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{k}.png")
                    cell.append((folder / f"{k}.png", index))
    return files


def test_an_imagenet_c_folder_is_scored_cell_by_cell_on_the_classes_it_holds(cli, tmp_path):
    from dropbench.core.export import load_exported_model
    from dropbench.core.transforms import build_transform
    from dropbench.evaluation import eval_transform_settings

    indices = [3, 250, 998]
    files = _imagenet_c(tmp_path / "imagenet-c", indices)
    export = make_untrained_export("vit_micro", tmp_path / "export", classes=1000)
    args = ("eval", "--backbone", export, "--data", tmp_path / "imagenet-c", "--workers", "0")
    code, _, err = cli(*args, "--results", tmp_path / "r")
    assert code == 0, err
    records = _records(tmp_path / "r")
    assert {r["protocol"] for r in records} == {"corruptions"} and {r["dataset"] for r in records} == {"imagenet-c"}
    values = {r["metric"]: r["value"] for r in records}
    assert "clean_top1" not in values and "corruption_drop" not in values  # ImageNet-C holds no clean images
    (cells_csv,) = (tmp_path / "r" / "corruptions").glob("*.csv")
    with open(cells_csv, newline="") as file:
        cells = {f"{r['corruption']}/{r['severity']}": float(r["top1"]) for r in csv.DictReader(file)}
    assert values["corrupted_top1"] == pytest.approx(np.mean(list(cells.values())))

    # one cell scored here: the model's logits restricted to the classes the folder holds
    model, sidecar = load_exported_model(export)
    settings = eval_transform_settings(sidecar, model)
    transform = build_transform(settings, sidecar.image_size, False, mean=settings["mean"], std=settings["std"])
    cell = files["frost/3"]
    with torch.no_grad():
        logits = model.eval()(torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in cell]))
    predicted = torch.tensor(indices)[logits[:, indices].argmax(dim=1)]
    truth = torch.tensor([index for _, index in cell])
    assert cells["frost/3"] == pytest.approx(100.0 * predicted.eq(truth).double().mean().item())

    code, _, err = cli(*args, "--results", tmp_path / "r2", "--mce-reference", cells_csv)
    assert code == 0, err
    assert {r["metric"]: r["value"] for r in _records(tmp_path / "r2")}["mce"] == pytest.approx(100.0)

    code, _, err = cli(*args, "--results", tmp_path / "r3", "--corruptions", "10")
    assert code == 2 and "--corruptions" in err and "leave it out" in err
    for image in (tmp_path / "imagenet-c" / "snow" / "5").rglob("*.png"):
        image.unlink()
    for folder in sorted((tmp_path / "imagenet-c" / "snow" / "5").iterdir()):
        folder.rmdir()
    (tmp_path / "imagenet-c" / "snow" / "5").rmdir()
    code, _, err = cli(*args, "--results", tmp_path / "r4")
    assert code == 2 and "snow/5" in err
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4" / "records").exists()
