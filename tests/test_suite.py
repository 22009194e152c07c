"""The suite runner: plan expansion, validation, and real runs (local subprocesses and a real one-node Slurm)."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dropbench.core.identity import Measurement
from dropbench.suite import SlurmResources, load_suite, queued_runs
from dropbench.suite.slurm_arrays import plan_batches

pytest.importorskip("mmdet")

TINY_PRETRAIN = dict(epochs=1, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
TINY_DENSE = {"train_cfg.max_iters": 2, "embedded_data.num_train": 4, "embedded_data.num_val": 2}
DET = {"kind": "det", "config": "configs/detection/mask_rcnn_cpu.py", "cfg_options": TINY_DENSE}
SEG = {"kind": "seg", "config": "configs/segmentation/upernet_cpu.py", "cfg_options": TINY_DENSE}
# Valid for the plan (the key exists), wrong when the run reads it: the transfer fails at run time.
BROKEN_DET = dict(DET, name="det-bad", cfg_options=TINY_DENSE | {"embedded_data.type": "not_coco"})
BROKEN_SEG = dict(SEG, name="seg-bad", cfg_options=TINY_DENSE | {"embedded_data.type": "not_ade"})
CLS = {"kind": "cls", "dataset": "optdigits", "protocol": "linear", "overrides": {"linear_c_grid": [1.0]}}


def _suite(folder: Path, name: str = "tiny", **changes) -> Path:
    suite = {
        "backbones": ["vit_micro"],
        "regimes": ["no_dropout"],
        "seeds": [0],
        "pretrain": {"recipe": "cpu", "data": "mnist", "overrides": TINY_PRETRAIN},
        "transfers": [DET],
        "output": {"runs": str(folder / "runs"), "results": str(folder / "results")},
    } | changes
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _broken_backbone(folder: Path) -> Path:
    """A backbone file the plan accepts (its model builds) whose pretraining fails: it is fed 48 px images while its
    patch embedding is fixed to 32 px."""
    path = folder / "broken_vit.yaml"
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    path.write_text(yaml.safe_dump({"model": "vit_tiny_patch16_224", "kwargs": kwargs, "input_size": 48}))
    return path


# ------------------------------------------------------------------------------------------------ the plan


def test_the_grid_expands_to_one_pretraining_per_point_each_followed_by_its_transfers(tmp_path):
    suite = load_suite(
        _suite(
            tmp_path,
            backbones=["vit_micro", "configs/backbones/swin_micro.yaml"],
            regimes=["no_dropout", "early_dropout"],
            seeds=[0, 1],
            transfers=[DET, SEG, CLS],
        )
    )
    assert suite.grid == (2, 2, 2, 3)
    assert len(suite.runs) == 2 * 2 * 2 * (1 + 3)
    names = [run.name for run in suite.runs]
    assert len(set(names)) == len(names)
    assert names[:4] == [
        "vit_micro-no_dropout-seed0/pretrain",
        "vit_micro-no_dropout-seed0/det-mask_rcnn_cpu",
        "vit_micro-no_dropout-seed0/seg-upernet_cpu",
        "vit_micro-no_dropout-seed0/cls-optdigits-linear",
    ]
    points = {
        f"{b}-{r}-seed{s}" for b in ("vit_micro", "swin_micro") for r in ("no_dropout", "early_dropout") for s in (0, 1)
    }
    assert {run.name.split("/")[0] for run in suite.runs} == points
    for index, run in enumerate(suite.runs):
        if run.kind == "pretrain":
            assert run.after is None
            seed = run.name.split("/")[0].rsplit("-seed", 1)[1]
            assert f"seed={seed}" in run.command and run.identity.stem().split("__")[3] == f"seed{seed}"
            continue
        pretraining = suite.run(run.after)
        assert names.index(run.after) < index, "a transfer comes after the pretraining it needs"
        assert pretraining.kind == "pretrain" and run.name.split("/")[0] == pretraining.name.split("/")[0]
        export = run.command[run.command.index("--backbone") + 1]
        assert Path(export) == pretraining.work_dir / "export"
        assert run.log.parent == pretraining.log.parent == run.work_dir.parent
    det = suite.run("swin_micro-early_dropout-seed1/det-mask_rcnn_cpu")
    assert det.command[:2] == ("transfer", "det")
    assert det.command[det.command.index("--cfg-options") + 1 :] == (
        "train_cfg.max_iters=2",
        "embedded_data.num_train=4",
        "embedded_data.num_val=2",
    )
    assert det.identity.stem().startswith(
        "swin_micro__early_dropout__cpu__seed1__transfer__detection__coco_digits__mask_rcnn_cpu__tseed0__"
    )
    assert det.command[det.command.index("--seed") + 1] == "0"
    cls = suite.run("vit_micro-no_dropout-seed1/cls-optdigits-linear")
    assert cls.command[-1] == "linear_c_grid=[1.0]"
    assert "__transfer__classification__optdigits__linear__tseed0__" in cls.identity.stem()


def test_a_plan_marks_the_runs_whose_records_exist_and_dry_run_runs_nothing(cli, tmp_path):
    path = _suite(tmp_path, regimes=["no_dropout", "late_dropout"], transfers=[DET, SEG])
    suite = load_suite(path)
    finished = suite.run("vit_micro-late_dropout-seed0/pretrain")
    written = finished.identity.write_records(
        tmp_path / "results", {"top1": 50.0}, Measurement(model="m", run_dir=tmp_path), started="s", code_version="v"
    )
    assert finished.finished() and finished.records() == written
    assert not suite.run("vit_micro-no_dropout-seed0/pretrain").finished()

    code, out, err = cli("suite", path, "--dry-run")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "6 runs, 1 finished, 5 to run" in lines[0]
    assert len(lines) == 1 + 6
    status = {line.split()[1]: line.split()[0] for line in lines[1:]}
    assert status["vit_micro-late_dropout-seed0/pretrain"] == "finished"
    assert {s for n, s in status.items() if n != "vit_micro-late_dropout-seed0/pretrain"} == {"run"}
    assert "-m dropbench.cli pretrain --backbone vit_micro --regime late_dropout" in lines[4]
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_the_shipped_suites_are_valid_plans():
    root = Path(__file__).resolve().parents[1] / "configs" / "suites"
    embedded, paper = load_suite(root / "embedded.yaml"), load_suite(root / "paper.yaml")
    assert embedded.grid == (1, 5, 1, 4)
    assert {run.kind for run in embedded.runs} == {"pretrain", "det", "seg", "cls"}
    assert paper.grid[0] == 3 and paper.grid[3] >= 3
    assert {run.kind for run in paper.runs} == {"pretrain", "det", "seg", "cls"}
    assert paper.sections["slurm"]["pretrain"].gpus > 1 and paper.sections["slurm"]["cls"].gpus == 1


def test_slurm_resources_take_defaults_then_per_stage_values_and_slurm_times(tmp_path):
    slurm = {"partition": "gpu", "cpus": 4, "time": "1-02:30:00", "cls": {"gpus": 1, "time": "45"}, "seg": {"time": 90}}
    suite = load_suite(_suite(tmp_path, slurm=slurm))
    assert suite.sections["slurm"]["pretrain"] == SlurmResources(partition="gpu", cpus=4, time=24 * 60 + 150)
    assert suite.sections["slurm"]["cls"] == SlurmResources(partition="gpu", cpus=4, gpus=1, time=45)
    assert suite.sections["slurm"]["seg"].time == 90 and suite.sections["slurm"]["det"].time == 24 * 60 + 150
    assert load_suite(_suite(tmp_path)).sections["slurm"]["det"] == SlurmResources()


def test_on_several_gpus_pretraining_and_dense_transfers_go_under_torchrun_and_parse(tmp_path):
    from dropbench.cli import build_parser
    from dropbench.suite.running import command_line

    suite = load_suite(_suite(tmp_path, transfers=[DET, CLS]))
    pretraining, det, cls = suite.runs
    for run in (pretraining, det):
        line = command_line(run, gpus=8)
        assert line[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m"]
        args = build_parser().parse_args(line[7:])
        assert args.command == run.kind or args.task == run.kind
    assert build_parser().parse_args(command_line(det, gpus=8)[7:]).launcher == "pytorch"
    assert build_parser().parse_args(command_line(det, gpus=8)[7:]).cfg_options == [
        "train_cfg.max_iters=2",
        "embedded_data.num_train=4",
        "embedded_data.num_val=2",
    ]
    assert command_line(cls, gpus=8)[1:3] == ["-m", "dropbench.cli"], "classification runs in one process"
    assert command_line(det, gpus=1)[1:3] == ["-m", "dropbench.cli"]


CLS_FINETUNE = dict(CLS, protocol="finetune", overrides={"epochs": 1, "warmup_epochs": 0})


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_the_local_dry_run_prints_the_exact_commands_for_n_gpus(cli, tmp_path, monkeypatch, gpus):
    """Pretraining and det/seg on every GPU under torchrun, in plan order; then the classification transfers
    packed one per GPU, ids taken from this process's own CUDA_VISIBLE_DEVICES."""
    from dropbench.cli import build_parser

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(str(10 + i) for i in range(8)))
    path = _suite(tmp_path, seeds=[0, 1], transfers=[DET, SEG, CLS, CLS_FINETUNE])
    code, out, err = cli("suite", path, "--dry-run", "--gpus", gpus)
    assert code == 0, err
    lines = [line.split(None, 2) for line in out.strip().splitlines()[1:]]
    names, commands = [name for _, name, _ in lines], [command.removeprefix("$ ") for _, _, command in lines]
    devices = [command.split()[0].removeprefix("CUDA_VISIBLE_DEVICES=") for command in commands]
    node = ("pretrain", "det-mask_rcnn_cpu", "seg-upernet_cpu")
    if gpus == 1:
        assert names == [run.name for run in load_suite(path).runs] and set(devices) == {"10"}
        assert all(command.split()[2:4] == ["-m", "dropbench.cli"] for command in commands)
        return
    assert [name.split("/")[1] for name in names[:6]] == [*node, *node]
    assert devices[:6] == [",".join(str(10 + i) for i in range(gpus))] * 6
    for name, command in zip(names[:6], commands[:6], strict=True):
        argv = command.split()[1:]
        assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"]
        args = build_parser().parse_args(argv[7:])
        assert (getattr(args, "launcher", None) == "pytorch") == (not name.endswith("pretrain"))
    assert [name.split("/")[1] for name in names[6:]] == ["cls-optdigits-linear", "cls-optdigits-finetune"] * 2
    assert devices[6:] == [str(10 + i % gpus) for i in range(4)], "one GPU each, in turn"
    assert all(command.split()[2:4] == ["-m", "dropbench.cli"] for command in commands[6:])


@pytest.mark.slow
def test_on_two_devices_pretraining_uses_both_and_classification_runs_go_side_by_side(tmp_path, monkeypatch):
    """The scheduler itself, on this machine's CPU: pretraining under torchrun with 2 processes (gloo), then both
    classification transfers started before either ends, each in its own log with its own device. (mmengine's
    launcher needs CUDA, so det/seg under torchrun are checked by the dry run only.)"""
    from dropbench.suite import execute_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pretraining = {"recipe": "cpu", "data": "mnist", "overrides": TINY_PRETRAIN | {"per_device_batch": 32}}
    suite = load_suite(_suite(tmp_path, pretrain=pretraining, transfers=[CLS, CLS_FINETUNE]))
    lines: list[str] = []
    outcomes = execute_local(suite, tmp_path, lines.append, gpus=2)
    assert [o.status for o in outcomes] == ["done"] * 3, [o.detail for o in outcomes]
    assert "CUDA_VISIBLE_DEVICES=0,1 " in outcomes[0].run.log.read_text().splitlines()[0]
    assert "--nproc_per_node=2" in outcomes[0].run.log.read_text().splitlines()[0]
    events = [line.split(": ", 1)[1].split()[0].rstrip(",") for line in lines if "/cls-" in line]
    assert events[:2] == ["running", "running"], lines
    for outcome, device in zip(outcomes[1:], ("0", "1"), strict=True):
        assert f"CUDA_VISIBLE_DEVICES={device} " in outcome.run.log.read_text().splitlines()[0]


def test_the_cpu_dry_run_with_jobs_lists_pretraining_first_with_a_share_of_the_cores(cli, tmp_path):
    path = _suite(tmp_path, regimes=["random_init", "no_dropout"], transfers=[DET, CLS])
    code, out, err = cli("suite", path, "--dry-run", "--gpus", "0", "--jobs", "2")
    assert code == 0, err
    lines = [line.split(None, 2) for line in out.strip().splitlines()[1:]]
    names, commands = [name for _, name, _ in lines], [command.removeprefix("$ ") for _, _, command in lines]
    assert [name.split("/")[1] for name in names] == [
        "pretrain",
        "pretrain",
        *["det-mask_rcnn_cpu", "cls-optdigits-linear"] * 2,
    ]
    threads = max(1, os.cpu_count() // 2)
    assert all(command.startswith(f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} ") for command in commands)
    code, out, _ = cli("suite", path, "--dry-run", "--gpus", "0")
    assert code == 0 and "OMP_NUM_THREADS" not in out, "one run at a time: the machine's threads, as before"
    for bad, message in ((("--jobs", "0"), "--jobs"), (("--jobs", "2", "--executor", "slurm"), "--jobs")):
        code, _, err = cli("suite", path, "--dry-run", *bad)
        assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_cpu_jobs_run_side_by_side_and_a_transfer_waits_for_its_pretraining(tmp_path, monkeypatch):
    """Two pretrainings start together; each transfer starts only once its own pretraining has ended; every run
    gets its share of the cores."""
    from dropbench.suite import execute_local

    monkeypatch.chdir(tmp_path)
    pretraining = {"recipe": "cpu", "data": "mnist", "overrides": TINY_PRETRAIN}
    suite = load_suite(_suite(tmp_path, regimes=["random_init", "no_dropout"], pretrain=pretraining, transfers=[CLS]))
    lines: list[str] = []
    outcomes = execute_local(suite, tmp_path, lines.append, gpus=0, jobs=2)
    assert [o.status for o in outcomes] == ["done"] * 4, [o.detail for o in outcomes]
    events = [(line.split("] ", 1)[1].split(":")[0], line.split(": ", 1)[1].split()[0].rstrip(",")) for line in lines]
    pretrainings = [name for name, _ in events if name.endswith("/pretrain")]
    assert events[:2] == [(pretrainings[0], "running"), (pretrainings[1], "running")], lines
    for outcome in outcomes:
        if outcome.run.after is not None:
            assert events.index((outcome.run.name, "running")) > events.index((outcome.run.after, "done")), lines
        threads = max(1, os.cpu_count() // 2)
        assert f"OMP_NUM_THREADS={threads} " in outcome.run.log.read_text().splitlines()[0]


def test_the_slurm_dry_run_shows_multi_node_pretraining_as_one_torchrun_per_node(cli, tmp_path):
    slurm = {"gpus": 8, "time": "2-00:00:00", "pretrain": {"nodes": 2}, "cls": {"gpus": 1}}
    path = _suite(tmp_path, transfers=[DET, CLS], slurm=slurm)
    code, out, err = cli("suite", path, "--executor", "slurm", "--dry-run")
    assert code == 0, err
    pretraining, det, cls, summary = out.strip().splitlines()[1:]
    assert "job 0: [2 node(s) × 8 GPU(s), 2880 min]" in pretraining
    assert "job 1, after job 0: [1 node(s) × 8 GPU(s)" in det
    assert summary == "slurm: 3 run(s) to submit in 3 sbatch call(s); job 0: pretrain; job 1: det; job 2: cls"
    rendezvous = "--nnodes=2 --rdzv_backend=c10d '--rdzv_endpoint=$FIRST_NODE:29500' '--rdzv_id=$SLURM_JOB_ID'"
    assert f"-m torch.distributed.run {rendezvous} --nproc_per_node=8 -m dropbench.cli pretrain " in pretraining
    assert "[1 node(s) × 8 GPU(s)" in det and "--standalone --nproc_per_node=8" in det and "--launcher pytorch" in det
    assert "[1 node(s) × 1 GPU(s)" in cls and "torch.distributed.run" not in cls
    code, _, err = cli("suite", _suite(tmp_path, slurm={"cls": {"nodes": 2}}), "--executor", "slurm", "--dry-run")
    assert code == 2 and "slurm.cls.nodes" in err


def test_the_slurm_dry_run_shows_one_array_per_stage_and_which_task_each_run_is(cli, tmp_path):
    code, out, err = cli(
        "suite", _suite(tmp_path, seeds=[0, 1, 2], transfers=[DET, CLS]), "--executor", "slurm", "--dry-run"
    )
    assert code == 0, err
    lines = out.strip().splitlines()[1:]
    for seed in range(3):
        assert f"seed{seed}/pretrain" in lines[seed] and f"$ array 0 task {seed}: [" in lines[seed]
        assert f"$ array 1 task {seed}, after array 0 task {seed}: [" in lines[3 + seed] and "/det-" in lines[3 + seed]
        assert f"$ array 2 task {seed}, after array 0 task {seed}: [" in lines[6 + seed] and "/cls-" in lines[6 + seed]
    assert lines[-1].startswith("slurm: 9 run(s) to submit in 3 sbatch call(s); array 0: 3 pretrain; array 1: 3 det")
    assert not (tmp_path / "runs").exists()


def test_slurm_gets_one_array_per_stage_each_transfer_task_after_its_own_pretraining(tmp_path):
    path = _suite(tmp_path, backbones=["vit_micro", "vit_tiny"], seeds=[0, 1], transfers=[DET, CLS])
    runs = load_suite(path).runs
    pretrainings = [run for run in runs if run.kind == "pretrain"]
    batches = plan_batches(runs)
    assert [(b.kind, len(b.runs), b.follows) for b in batches] == [("pretrain", 4, None), ("det", 4, 0), ("cls", 4, 0)]
    for batch in batches[1:]:
        assert [run.after for run in batch.runs] == [run.name for run in pretrainings], "task i reads export i"

    # Exports that exist: nothing to wait for, one array per kind. Pretrainings queued already: each transfer alone.
    transfers = [run for run in runs if run.kind != "pretrain"]
    assert [(b.kind, len(b.runs), b.follows) for b in plan_batches(transfers)] == [("det", 4, None), ("cls", 4, None)]
    queued = frozenset(run.name for run in pretrainings)
    assert [(b.kind, len(b.runs), b.follows) for b in plan_batches(transfers, queued)] == [("det", 1, None)] * 4 + [
        ("cls", 1, None)
    ] * 4

    # A backbone with transfers of its own: the cls transfers no longer sit at their pretraining's index.
    own = [{"backbone": "vit_micro", "transfers": ["det-mask_rcnn_cpu"]}, "vit_tiny"]
    runs = load_suite(_suite(tmp_path, backbones=own, seeds=[0, 1], transfers=[DET, CLS])).runs
    shape = [(b.kind, len(b.runs), b.follows) for b in plan_batches(runs)]
    assert shape == [("pretrain", 4, None), ("det", 4, 0), ("cls", 1, None), ("cls", 1, None)]


def test_more_gpus_than_visible_are_refused_before_anything_runs(cli, tmp_path):
    code, _, err = cli("suite", _suite(tmp_path), "--gpus", "64")
    assert code == 2 and "--gpus" in err and "visible" in err
    assert not (tmp_path / "runs").exists()
    code, _, err = cli("suite", _suite(tmp_path), "--gpus", "-1", "--dry-run")
    assert code == 2 and "--gpus" in err and err.count("\n") == 1


def _pretrain(**overrides) -> dict:
    return {"pretrain": {"recipe": "cpu", "data": "mnist", "overrides": overrides}}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (dict(backbones=["vit_mikro"]), "backbones[0]", "vit_micro"),
        (dict(backbones=[]), "backbones", "empty"),
        (dict(backbones=["vit_micro", "configs/backbones/vit_micro.yaml"]), "backbones[1]", "again"),
        (dict(regimes=["no_dropout", "erly_dropout"]), "regimes[1]", "early_dropout"),
        (dict(regimes=["no_dropout", "no_dropout"]), "regimes[1]", "twice"),
        (dict(regime=["no_dropout"]), "regime", "regimes"),
        (dict(seeds=[0, "one"]), "seeds[1]", "seeds"),
        (dict(pretrain={"recipe": "cpuu", "data": "mnist"}), "pretrain.recipe", "cpu"),
        (dict(pretrain={"recipe": "cpu"}), "pretrain.data", "missing"),
        (_pretrain(epcohs=1), "pretrain.overrides.epcohs", "epochs"),
        (_pretrain(epochs=0), "pretrain.overrides.epochs", "positive"),
        (_pretrain(seed=3), "pretrain.overrides.seed", "seeds"),
        (dict(transfers=[{"kind": "detection", "config": "x"}]), "transfers[0].kind", "det"),
        (dict(transfers=[{"kind": "det"}]), "transfers[0].config", "missing"),
        (dict(transfers=[{"kind": "det", "config": "mask_rcnn_cpuu"}]), "transfers[0].config", "mask_rcnn_cpu"),
        (
            dict(transfers=[dict(DET, cfg_options={"train_cfg.max_iter": 2})]),
            "transfers[0].cfg_options.train_cfg.max_iter",
            "max_iters",
        ),
        (dict(transfers=[dict(DET, **{"cfg-options": {}})]), "transfers[0].cfg-options", "cfg_options"),
        (dict(transfers=[dict(CLS, protocol="linaer")]), "transfers[0].protocol", "linear"),
        (dict(transfers=[dict(CLS, dataset="optdigit")]), "transfers[0].dataset", "optdigits"),
        (dict(transfers=[dict(CLS, overrides={"epoch": 2})]), "transfers[0].overrides.epoch", "epochs"),
        (dict(transfers=[DET, dict(DET, cfg_options={})]), "transfers[1]", "records"),
        (dict(output={"run": "x"}), "output.run", "runs"),
        (dict(slurm={"gpu": 1}), "slurm.gpu", "gpus"),
        (dict(slurm={"time": "soon"}), "slurm.time", "time"),
        (dict(slurm={"det": {"cpus": 0}}), "slurm.det.cpus", "positive"),
    ],
)
def test_a_bad_suite_file_is_one_line_naming_the_field(cli, tmp_path, changes, field, words):
    code, out, err = cli("suite", _suite(tmp_path, **changes), "--dry-run")
    assert code == 2, out + err
    assert err.startswith(f"error: {field}: ") and err.count("\n") == 1, err
    assert words in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [("backbones: [vit_micro\n", "not valid YAML"), ("- a list\n", "mapping"), (None, "no such file")],
)
def test_a_suite_file_that_is_not_a_yaml_mapping_is_named(cli, tmp_path, text, words):
    path = tmp_path / "suite.yaml"
    if text is not None:
        path.write_text(text)
    code, _, err = cli("suite", path)
    assert code == 2 and err.startswith("error: suite: ") and words in err, err


def test_a_regime_a_backbone_cannot_take_fails_the_whole_suite_before_any_run(cli, tmp_path):
    path = _suite(tmp_path, backbones=["vit_micro", "convnext_micro"], regimes=["no_dropout", "early_dropout"])
    code, out, err = cli("suite", path)
    assert code == 2 and out == "" and err.count("\n") == 1, out + err
    assert err.startswith("error: backbones[1] × regime early_dropout: ") and "no dropout module" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_backbone_whose_model_cannot_be_built_fails_the_plan(cli, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"model": "vit_tiny_patch16_224", "kwargs": {"no_such_kwarg": 1}}))
    code, _, err = cli("suite", _suite(tmp_path, backbones=[str(broken)]), "--dry-run")
    assert code == 2 and "no_such_kwarg" in err and err.count("\n") == 1, err


def test_a_backbone_entry_may_restrict_its_regimes(tmp_path):
    entry = {"backbone": "convnext_micro", "regimes": ["no_dropout", "early_sd"]}
    suite = load_suite(_suite(tmp_path, backbones=["vit_micro", entry], regimes=["no_dropout", "early_dropout"]))
    points = [run.name.split("/")[0] for run in suite.runs if run.kind == "pretrain"]
    assert points == [
        "vit_micro-no_dropout-seed0",
        "vit_micro-early_dropout-seed0",
        "convnext_micro-no_dropout-seed0",
        "convnext_micro-early_sd-seed0",
    ]


def test_a_transfer_with_no_protocol_for_a_backbone_fails_the_suite_before_any_pretraining(cli, tmp_path):
    path = _suite(tmp_path, backbones=["vit_micro", "mixer_micro"], transfers=[DET, CLS])
    for args in ((path, "--dry-run"), (path,)):
        code, out, err = cli("suite", *args)
        assert code == 2 and out == "" and err.count("\n") == 1, out + err
        assert err.startswith("error: backbones[1] × det-mask_rcnn_cpu: ") and "fixed token grid" in err, err
        assert "transfers: [...]" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_backbone_entry_may_list_its_own_transfers_by_name(cli, tmp_path):
    mixer = {"backbone": "mixer_micro", "transfers": ["cls-optdigits-linear"]}
    suite = load_suite(_suite(tmp_path, backbones=["vit_micro", mixer], transfers=[DET, CLS]))
    names = [run.name for run in suite.runs]
    assert names == [
        "vit_micro-no_dropout-seed0/pretrain",
        "vit_micro-no_dropout-seed0/det-mask_rcnn_cpu",
        "vit_micro-no_dropout-seed0/cls-optdigits-linear",
        "mixer_micro-no_dropout-seed0/pretrain",
        "mixer_micro-no_dropout-seed0/cls-optdigits-linear",
    ]
    unknown = {"backbone": "mixer_micro", "transfers": ["cls-optdigits"]}
    code, _, err = cli("suite", _suite(tmp_path, backbones=[unknown], transfers=[DET, CLS]), "--dry-run")
    assert code == 2 and err.startswith("error: backbones[0].transfers[0]: no transfer task is named 'cls-optdigits'")


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "suites").glob("*.yaml"))
)
def test_every_shipped_suite_passes_its_dry_run(cli, name):
    path = Path(__file__).resolve().parents[1] / "configs" / "suites" / f"{name}.yaml"
    code, out, err = cli("suite", path, "--dry-run")
    assert code == 0, err
    assert out.startswith(f"suite '{name}': ")


def test_transfer_seeds_give_one_run_each_with_its_seed_and_record_name(tmp_path):
    suite = load_suite(_suite(tmp_path, transfers=[DET, CLS], transfer_seeds=[0, 1]))
    names = [run.name for run in suite.runs]
    assert names == [
        "vit_micro-no_dropout-seed0/pretrain",
        "vit_micro-no_dropout-seed0/det-mask_rcnn_cpu-tseed0",
        "vit_micro-no_dropout-seed0/det-mask_rcnn_cpu-tseed1",
        "vit_micro-no_dropout-seed0/cls-optdigits-linear-tseed0",
        "vit_micro-no_dropout-seed0/cls-optdigits-linear-tseed1",
    ]
    for run in suite.runs[1:]:
        seed = run.command[run.command.index("--seed") + 1]
        assert run.identity.transfer_seed == int(seed) and f"__tseed{seed}__" in run.identity.stem()


# ------------------------------------------------------------------------------------------------ real runs


def _outcome_lines(out: str) -> dict[str, str]:
    """The runner's last progress line per run: name → status text."""
    lines = {}
    for line in out.splitlines():
        head, sep, status = line.partition(": ")
        if sep and "/" in head:
            lines[head.split("] ", 1)[-1]] = status
    return lines


@pytest.mark.slow
def test_a_suite_runs_once_and_a_failed_run_costs_only_itself_and_its_transfers(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded det/seg configs make data/ under the working folder
    broken = _broken_backbone(tmp_path)
    path = _suite(tmp_path, backbones=["vit_micro", str(broken)], transfers=[DET, BROKEN_SEG])
    started = time.perf_counter()
    code, out, err = cli("suite", path)
    assert code == 1, out + err
    outcomes = _outcome_lines(out)
    assert outcomes["vit_micro-no_dropout-seed0/pretrain"].startswith("done")
    assert outcomes["vit_micro-no_dropout-seed0/det-mask_rcnn_cpu"].startswith("done")
    assert outcomes["vit_micro-no_dropout-seed0/seg-bad"].startswith("failed")
    assert outcomes["broken_vit-no_dropout-seed0/pretrain"].startswith("failed")
    assert outcomes["broken_vit-no_dropout-seed0/det-mask_rcnn_cpu"].startswith("skipped")
    assert outcomes["broken_vit-no_dropout-seed0/seg-bad"].startswith("skipped")

    summary = out[out.index("suite 'tiny': ") :]
    assert summary.splitlines()[0] == "suite 'tiny': 2 done, 0 finished earlier, 2 failed, 2 skipped"
    runs = tmp_path / "runs"
    bad_log = runs / "vit_micro-no_dropout-seed0" / "seg-bad.log"
    assert f"log: {bad_log}" in summary and f"log: {runs / 'broken_vit-no_dropout-seed0' / 'pretrain.log'}" in summary
    assert "embedded_data.type: 'not_ade' is not 'ade_digits'" in bad_log.read_text()
    assert "embedded_data.type" in summary, "the failure's last log line is shown"
    assert "doesn't match model" in (runs / "broken_vit-no_dropout-seed0" / "pretrain.log").read_text()
    assert not (runs / "broken_vit-no_dropout-seed0" / "det-mask_rcnn_cpu.log").exists()

    records = sorted(p.name for p in (tmp_path / "results" / "records").glob("*.json"))
    pretraining = "vit_micro__no_dropout__cpu__seed0__pretrain__classification__mnist__from_scratch__"
    detection = "vit_micro__no_dropout__cpu__seed0__transfer__detection__coco_digits__mask_rcnn_cpu__tseed0__"
    assert any(p.startswith(pretraining) and p.endswith("__top1.json") for p in records)
    assert any(p.startswith(detection) and p.endswith("__box_AP.json") for p in records)
    assert all(p.startswith("vit_micro__") for p in records)
    suite = load_suite(path)
    for name in ("vit_micro-no_dropout-seed0/pretrain", "vit_micro-no_dropout-seed0/det-mask_rcnn_cpu"):
        assert suite.run(name).finished(), "the plan's record names are those the runs wrote"
        assert json.loads(suite.run(name).records()[0].read_text())["run_dir"] == str(
            suite.run(name).work_dir.resolve()
        )

    # The same suite without its failing parts: everything is finished, nothing runs, nothing is written.
    logs = {p: p.stat().st_mtime_ns for p in runs.rglob("*.log")}
    path = _suite(tmp_path, transfers=[DET])
    code, out, err = cli("suite", path)
    assert code == 0, out + err
    assert "suite 'tiny': 0 done, 2 finished earlier, 0 failed, 0 skipped" in out
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.log")} == logs
    assert "running" not in out
    print(f"local suite: {time.perf_counter() - started:.0f} s")


@pytest.mark.slow
def test_an_interrupted_pretraining_is_resumed_and_a_stale_start_is_cleared(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _suite(tmp_path, transfers=[])
    run = load_suite(path).runs[0]
    run.work_dir.mkdir(parents=True)
    (run.work_dir / "config.json").write_text("{}")  # an attempt that died before its first checkpoint
    code, out, err = cli("suite", path)
    assert code == 0, out + err
    assert (run.work_dir / "export" / "backbone.json").is_file()
    # Records gone but the run is there: the runner resumes it (nothing to train) and the record is written again.
    shutil.rmtree(tmp_path / "results")
    code, out, err = cli("suite", path)
    assert code == 0, out + err
    assert run.finished()
    assert "--resume" in run.log.read_text().split("=====")[-1].splitlines()[0]


# ------------------------------------------------------------------------------------------------ a real Slurm


def _sh(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm on loopback (STACK.md's recipe): munge, slurmctld and slurmd, stopped at the end."""
    if os.geteuid() != 0:
        pytest.skip("a real Slurm needs root (to install slurm-wlm and munge and run their daemons)")
    if not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")):
        if not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and there is no apt-get to install slurm-wlm and munge")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            if result.returncode != 0:
                pytest.skip(f"cannot install Slurm: {' '.join(command)}: {result.stderr.strip()[-300:]}")
    root = tmp_path_factory.mktemp("slurm")
    started: list[subprocess.Popen] = []
    monkeypatch = pytest.MonkeyPatch()

    def stop() -> None:
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        monkeypatch.undo()

    try:
        if _sh("sh", "-c", "munge -n | unmunge").returncode != 0:
            key = Path("/etc/munge/munge.key")
            if not key.is_file():
                key.parent.mkdir(parents=True, exist_ok=True)
                key.write_bytes(os.urandom(1024))
                shutil.chown(key, "munge", "munge")
                key.chmod(0o400)
            Path("/run/munge").mkdir(exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            started.append(
                subprocess.Popen(
                    ["munged", "--foreground"],
                    user="munge",
                    group="munge",
                    stdout=(root / "munged.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
            for _ in range(50):
                if _sh("sh", "-c", "munge -n | unmunge").returncode == 0:
                    break
                time.sleep(0.2)
            else:
                pytest.skip(f"munged did not start: {(root / 'munged.log').read_text()[-300:]}")
        host = socket.gethostname().split(".")[0]
        cpus, memory = os.cpu_count() or 1, int(_memory_mb() * 0.8)
        conf = root / "slurm.conf"
        conf.write_text(
            "\n".join(
                [
                    "ClusterName=dropbench-test",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'slurmd.log'}",
                    "DefMemPerCPU=1000",
                    f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
                    f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )
        (root / "state").mkdir()
        (root / "spool").mkdir()
        monkeypatch.setenv("SLURM_CONF", str(conf))  # the daemons, sbatch/squeue and the jobs read this file
        for daemon in (["slurmctld", "-D", "-c"], ["slurmd", "-D"]):
            started.append(
                subprocess.Popen(daemon, stdout=(root / f"{daemon[0]}.out").open("w"), stderr=subprocess.STDOUT)
            )
            time.sleep(1)
        for _ in range(60):
            state = _sh("sinfo", "--noheader", "--format=%T").stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            logs = "".join(
                (root / n).read_text()[-400:] for n in ("slurmctld.out", "slurmd.out") if (root / n).exists()
            )
            pytest.skip(f"Slurm did not start (sinfo says {state!r}): {logs}")
    except BaseException:
        stop()
        raise
    yield root
    stop()


def _submission(runs: Path, job_id: str) -> str:
    return (runs / "slurm" / job_id / f"{job_id}_submission.sh").read_text()


@pytest.mark.slow
def test_the_slurm_executor_runs_transfers_after_their_pretraining_and_reports_failures(
    slurm_cluster, cli, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    broken = _broken_backbone(tmp_path)
    path = _suite(
        tmp_path,
        backbones=["vit_micro", str(broken)],
        transfers=[SEG, BROKEN_DET],
        slurm={"cpus": 1, "time": 10},
    )
    code, out, err = cli("suite", path, "--executor", "slurm")
    assert code == 1, out + err
    jobs = {}
    for line in out.splitlines():
        name, _, status = line.partition(": ")
        if status.startswith("submitted as Slurm job "):
            jobs[name] = status.split()[4].rstrip(",")
    assert len(jobs) == 6, out
    runs = tmp_path / "runs"
    # One array per stage (3 sbatch calls for 6 runs); task i of a transfer array reads pretraining task i's export.
    pretrain_array = jobs["vit_micro-no_dropout-seed0/pretrain"].partition("_")[0]
    assert jobs["broken_vit-no_dropout-seed0/pretrain"] == f"{pretrain_array}_1"
    script = _submission(runs, pretrain_array)
    assert "--dependency" not in script and "#SBATCH --array=0-1%2" in script
    for transfer in ("seg-upernet_cpu", "det-bad"):
        array = jobs[f"vit_micro-no_dropout-seed0/{transfer}"].partition("_")[0]
        assert jobs[f"broken_vit-no_dropout-seed0/{transfer}"] == f"{array}_1"
        script = _submission(runs, array)
        assert f"#SBATCH --dependency=aftercorr:{pretrain_array}" in script
        assert f"#SBATCH --job-name=dropbench:tiny:{transfer[:3]}" in script

    outcomes = {}
    for line in out.splitlines():
        name, _, status = line.partition(": ")
        if "/" in name and not status.startswith("submitted"):
            outcomes[name] = status
    assert outcomes["vit_micro-no_dropout-seed0/pretrain"] == "done"
    assert outcomes["vit_micro-no_dropout-seed0/seg-upernet_cpu"] == "done"
    assert outcomes["vit_micro-no_dropout-seed0/det-bad"].startswith("failed (exit code 2: error: embedded_data.type")
    assert outcomes["broken_vit-no_dropout-seed0/pretrain"].startswith(
        "failed (exit code 1: AssertionError: Input height"
    )
    for transfer in ("seg-upernet_cpu", "det-bad"):  # aftercorr holds them forever unless the runner cancels them
        assert outcomes[f"broken_vit-no_dropout-seed0/{transfer}"].startswith("skipped")
    summary = out[out.index("suite 'tiny': ") :]
    assert summary.splitlines()[0] == "suite 'tiny': 2 done, 0 finished earlier, 2 failed, 2 skipped"
    assert f"log: {runs / 'vit_micro-no_dropout-seed0' / 'det-bad.log'}" in summary
    records = {p.name for p in (tmp_path / "results" / "records").glob("*.json")}
    segmentation = "vit_micro__no_dropout__cpu__seed0__transfer__segmentation__ade_digits__upernet_cpu__tseed0__"
    assert any(p.startswith(segmentation) and p.endswith("__mIoU.json") for p in records)
    seg_log = (runs / "vit_micro-no_dropout-seed0" / "seg-upernet_cpu.log").read_text()
    assert "mIoU" in seg_log, "the run's own output goes to its log"
    # A job whose result is written may still be exiting; one left waiting on a failed dependency never leaves.
    deadline = time.monotonic() + 30
    while (pending := _sh("squeue", "--noheader", "--format=%i %T").stdout.split()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pending, f"no job is left in the queue: {pending}"

    # A second invocation submits nothing that has finished.
    finished_part = _suite(tmp_path, "tiny_seg", transfers=[SEG], slurm={"cpus": 1, "time": 10})
    code, out, err = cli("suite", finished_part, "--executor", "slurm")
    assert code == 0 and "submitted" not in out and "2 finished earlier" in out, out + err

    # An interrupted invocation's run that Slurm still has, a task of a pending array here, is found by the job id
    # the suite kept, so it is not submitted twice; a finished job's id is not.
    ledger = runs / "slurm" / "jobs.json"
    kept = json.loads(ledger.read_text())
    assert kept == jobs
    held = _sh("sbatch", "--hold", "--array=0-2", "--parsable", "--wrap=true")
    assert held.returncode == 0, held.stderr
    try:
        task = f"{held.stdout.strip()}_1"
        ledger.write_text(json.dumps(kept | {"vit_micro-no_dropout-seed0/det-bad": task}))
        assert queued_runs(load_suite(path)) == {"vit_micro-no_dropout-seed0/det-bad": task}
    finally:
        _sh("scancel", held.stdout.strip())


@pytest.mark.long  # each requeued job waits about 2 minutes in Slurm before it starts again
def test_a_run_past_its_time_limit_requeues_itself_and_ends_as_an_uninterrupted_run(
    slurm_cluster, cli, tmp_path, monkeypatch
):
    """A pretraining and a Mask R-CNN transfer that each need more than their job's two-minute limit: Slurm signals
    the job before the limit, submitit requeues it, and the requeued job resumes (the pretraining from its last
    epoch's checkpoint, the transfer from its last iteration checkpoint, with ``--resume``); the transfer starts
    after the pretraining (afterok holds through the requeue). The records of both equal those of the same runs made
    in one go."""
    monkeypatch.chdir(tmp_path)
    # About 150 s of training in 2-minute jobs (Slurm may signal up to a minute early: a 1-minute job could get its
    # warning before Python has set up the handler).
    overrides = TINY_PRETRAIN | {"epochs": 40, "train_subset": 6144}
    pretraining = {"recipe": "cpu", "data": "mnist", "overrides": overrides}
    # About 150 s too: 900 iterations at about 6 per second, a checkpoint every 100.
    long_det = dict(DET, cfg_options={"train_cfg.max_iters": 900, "embedded_data.num_val": 50})
    path = _suite(tmp_path, pretrain=pretraining, transfers=[long_det], slurm={"cpus": 2, "time": 2})
    code, out, err = cli("suite", path, "--executor", "slurm")
    assert code == 0, out + err
    suite = load_suite(path)
    for name in ("pretrain", "det-mask_rcnn_cpu"):
        run = suite.run(f"vit_micro-no_dropout-seed0/{name}")
        starts = [line for line in run.log.read_text().splitlines() if line.startswith("=====")]
        assert len(starts) >= 2 and all("--resume" in line for line in starts[1:]), (name, starts)
        if name != "pretrain":
            assert "resuming from" in run.log.read_text() and "iter_" in run.log.read_text()

        command = list(run.command)
        out_flag = "--out" if name == "pretrain" else "--work-dir"
        command[command.index(out_flag) + 1] = str(tmp_path / f"{name}_in_one_go")
        command[command.index("--results") + 1] = str(tmp_path / "in_one_go_results")
        code, _, err = cli(*command)
        assert code == 0, err

    def values(results: Path) -> dict[tuple[str, str], float]:
        records = (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))
        return {(r["stage"], r["metric"]): r["value"] for r in records}

    in_one_go = values(tmp_path / "in_one_go_results")
    assert {stage for stage, _ in in_one_go} == {"pretrain", "transfer"}
    assert values(tmp_path / "results") == in_one_go


class _FakeJob:
    """What the Slurm executor reads of a submitit job: its id, its result file, its result and its cancel."""

    def __init__(self, job_id: str, folder: Path, error: str | None = None):
        self.job_id, self.error, self.cancelled = job_id, error, False
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl", "stderr": folder / "err"})

    def finish(self) -> None:
        self.paths.result_pickle.write_bytes(b"done")

    def result(self):
        if self.error:
            raise RuntimeError(self.error)
        return 0

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True


def test_slurm_polling_cancels_the_transfers_of_a_failed_pretraining_and_notices_vanished_jobs(tmp_path, monkeypatch):
    from dropbench.suite import slurm

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        "backbones: [vit_micro]\nregimes: [no_dropout, early_dropout]\n"
        "pretrain: {recipe: cpu, data: mnist}\n"
        "transfers: [{kind: cls, dataset: sklearn_digits, protocol: linear}]\n"
        f"output: {{runs: {tmp_path / 'runs'}, results: {tmp_path / 'results'}}}\n"
    )
    suite = load_suite(suite_file)
    failing_pretrain, its_transfer, other_pretrain, other_transfer = (run.name for run in suite.runs)
    jobs = {
        failing_pretrain: _FakeJob("11", tmp_path, error="RunFailed: exit code 2; see log"),
        its_transfer: _FakeJob("12", tmp_path),
        other_pretrain: _FakeJob("13", tmp_path),
        other_transfer: _FakeJob("14", tmp_path),
    }
    jobs[failing_pretrain].finish()
    polls = []

    def squeue(job_ids):
        polls.append(sorted(job_ids))
        # 13 left the queue without a result (cancelled by hand, out of memory); 14 waits for it.
        return {job_id: "PENDING" for job_id in job_ids if job_id == "14"}

    monkeypatch.setattr(slurm, "_squeue_states", squeue)
    monkeypatch.setattr(slurm.time, "sleep", lambda seconds: None)
    outcomes, lines = {}, []
    slurm._wait_for_jobs(suite, dict(jobs), outcomes, lines.append, poll=0.01)

    assert outcomes[failing_pretrain].status == "failed" and "exit code 2" in outcomes[failing_pretrain].detail
    assert jobs[its_transfer].cancelled and outcomes[its_transfer].status == "skipped"
    assert outcomes[other_pretrain].status == "failed" and "without a result" in outcomes[other_pretrain].detail
    assert sum("13" in ids for ids in polls) == 3, "a vanished job is looked at three times before it counts"
    assert jobs[other_transfer].cancelled and outcomes[other_transfer].status == "skipped"
    assert len(outcomes) == 4 and sum("skipped" in line for line in lines) == 2


def test_a_suite_of_imported_exports_runs_only_their_transfers(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "imported.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "imported",
                "exports": [str(exports["vit_micro"])],
                "transfers": [
                    {
                        "kind": "cls",
                        "dataset": "sklearn_digits",
                        "protocol": "linear",
                        "overrides": {"train_subset": 100, "test_subset": 50},
                    }
                ],
                "output": {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results")},
            }
        )
    )
    plan = load_suite(suite)
    assert [run.kind for run in plan.runs] == ["cls"] and plan.runs[0].after is None
    assert str(exports["vit_micro"]) in plan.runs[0].command
    code, out, err = cli("suite", suite)
    assert code == 0, out + err
    assert plan.runs[0].finished(), "the transfer wrote the records the plan expects"
    suite.write_text(suite.read_text().replace(str(exports["vit_micro"]), str(tmp_path / "nowhere")))
    code, _, err = cli("suite", suite, "--dry-run")
    assert code == 2 and "exports[0]" in err


def test_trackers_reach_the_pretraining_and_det_seg_commands_but_not_the_identity(cli, tmp_path):
    plain = load_suite(_suite(tmp_path, name="plain"))
    tracked = _suite(
        tmp_path,
        name="tracked",
        pretrain={
            "recipe": "cpu",
            "data": "mnist",
            "overrides": TINY_PRETRAIN | {"loggers": ["tensorboard", "mlflow"]},
        },
        transfers=[DET | {"loggers": ["wandb", "mlflow"]}],
    )
    code, out, err = cli("suite", tracked, "--dry-run", "--gpus", "0")
    assert code == 0, err
    pretraining, detection = (line for line in out.splitlines() if "$ " in line)
    assert """'loggers=["tensorboard", "mlflow"]'""" in pretraining
    assert "--loggers wandb mlflow" in detection
    assert [run.identity for run in load_suite(tracked).runs] == [run.identity for run in plain.runs]
    code, _, err = cli("suite", _suite(tmp_path, name="bad", transfers=[DET | {"loggers": ["neptune"]}]), "--dry-run")
    assert code == 2 and "transfers[0].loggers" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_a_suite_started_again_resumes_an_interrupted_transfer(cli, exports, tmp_path, monkeypatch):
    """The suite killed (SIGKILL, runner and run) after its det transfer's first checkpoint; started again, it
    continues that transfer from the checkpoint (``--resume``) to its records."""
    from dropbench.suite.running import command_line
    from tests.conftest import kill_once_written

    monkeypatch.chdir(tmp_path)
    options = TINY_DENSE | {"train_cfg.max_iters": 12, "default_hooks.checkpoint.interval": 6}
    suite = tmp_path / "imported.yaml"
    output = {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results")}
    plan = {"exports": [str(exports["vit_micro"])], "transfers": [dict(DET, cfg_options=options)], "output": output}
    suite.write_text(yaml.safe_dump(plan))
    (run,) = load_suite(suite).runs
    assert "--resume" not in command_line(run, gpus=0)
    kill_once_written(["suite", str(suite)], run.work_dir / "iter_6.pth", tmp_path)
    assert not run.finished()

    assert command_line(run, gpus=0)[1:6] == ["-m", "dropbench.cli", "transfer", "det", "--resume"]
    code, out, err = cli("suite", suite)
    assert code == 0, out + err
    starts = [line for line in run.log.read_text().splitlines() if line.startswith("=====")]
    assert "--resume" in starts[-1], starts
    assert f"resuming from {run.work_dir / 'iter_6.pth'}" in run.log.read_text() and run.finished()
