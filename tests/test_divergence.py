"""A run whose training loss stops being finite fails loudly: one line naming where it stopped, the lr, its last good
checkpoint and what to try, a non-zero exit, no export and no record; the table refuses a record that holds one."""

import json
from pathlib import Path

import pytest

from dropbench.compare import read_records
from dropbench.core.identity import ResultRecord, StageName

pytest.importorskip("mmdet")

TINY = ["epochs=2", "train_subset=256", "val_subset=64", "batch_size=64", "per_device_batch=64", "warmup_epochs=0"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"


def _records(results: Path) -> list[Path]:
    return sorted((results / "records").glob("*.json")) if (results / "records").is_dir() else []


# A diverging lr in every stage: tests/test_faults.py.


def test_a_record_that_holds_a_non_finite_value_is_refused_by_name(tmp_path):
    record = ResultRecord(
        backbone="b",
        regime="r",
        recipe="c",
        seed=0,
        stage=StageName.PRETRAIN,
        task="classification",
        dataset="d",
        protocol="p",
        model="m",
        run_dir="r",
        metric="top1",
        value=float("nan"),
        config_hash="h",
        code_version="v",
        started="s",
        finished="f",
    )
    path = record.write(tmp_path)
    assert json.loads(path.read_text().replace("NaN", "null"))["value"] is None
    frame, skipped = read_records(tmp_path)
    assert frame.empty and len(skipped) == 1 and path.name in skipped[0] and "not finite" in skipped[0]


def test_compare_strict_turns_a_record_it_cannot_read_into_an_error(cli, tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "half.json").write_text('{"backbone": "b", "val')
    code, out, err = cli("compare", "--results", tmp_path)
    assert code == 0 and "warning: skipping" in err and "half.json" in err
    code, out, err = cli("compare", "--results", tmp_path, "--strict")
    assert code == 2 and err.startswith("error: --strict: skipping") and "half.json" in err and err.count("\n") == 1


def test_a_linear_probe_on_features_that_are_not_finite_fails_and_records_nothing(cli, tmp_path):
    """An export whose weights hold a NaN (a diverged run exported by other tools) gives NaN features: the probe
    stops in one line before fitting anything."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .conftest import make_untrained_export

    export = make_untrained_export("vit_micro", tmp_path / "export")
    weights = export / "backbone.safetensors"
    with safe_open(weights, "pt") as file:
        metadata, tensors = file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
    norm = next(key for key in tensors if key.endswith("norm.weight"))
    tensors[norm][0] = float("nan")
    save_file(tensors, weights, metadata=metadata)
    results = tmp_path / "results"
    code, _, err = cli(
        "transfer", "cls", "--backbone", export, "--dataset", "optdigits", "--protocol", "linear",
        "--work-dir", tmp_path / "work", "--results", results, "train_subset=64", "test_subset=32",
    )  # fmt: skip
    assert code == 1 and "are not finite" in err and "nothing is recorded" in err
    assert len(err.strip().splitlines()) == 1, err
    assert _records(results) == []
