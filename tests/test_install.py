"""A plain (non-editable) install of the checkout in a fresh virtual environment finds its configs and paper
records by name and runs from an empty folder: nothing is read from the checkout."""

import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _copy_sources(target: Path) -> None:
    """The files git tracks or would add (no runs, results or virtual environments), as a fresh clone has them."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())


@pytest.mark.slow
def test_a_non_editable_install_runs_from_an_empty_folder(tmp_path):
    source, env_dir, empty = tmp_path / "src", tmp_path / "venv", tmp_path / "empty"
    _copy_sources(source)
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    # The dependencies (torch, timm, mm*) come from this environment as a plain path: its .pth files, among them
    # the editable install of this checkout, are not processed there.
    Path(env_site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    empty.mkdir()
    dropbench = env_dir / "bin" / "dropbench"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([dropbench, *args], cwd=empty, capture_output=True, text=True, timeout=600)

    where = subprocess.run(
        [python, "-c", "import dropbench.pretrain, dropbench.core.configs as c; print(c.CONFIG_ROOT)"],
        cwd=empty,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(env_site), "configs are read from the installed package"
    assert not Path(env_site, "pretrain").exists() and not Path(env_site, "transfer").exists()

    schedule = run(
        "schedule", "--rate", "0.1", "--epochs", "4", "--iters-per-epoch", "2", "--cutoff-epoch", "2", "--mode", "early"
    )
    assert schedule.returncode == 0, schedule.stderr[-2000:]
    tiny = ["epochs=1", "train_subset=256", "val_subset=64", "batch_size=64", "per_device_batch=64", "warmup_epochs=0"]
    pretrain = run(
        "pretrain",
        "--backbone",
        "vit_micro",
        "--regime",
        "early_dropout",
        "--recipe",
        "cpu",
        "--data",
        "mnist",
        "--out",
        "run",
        "--results",
        "results",
        *tiny,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-2000:]
    assert (empty / "run" / "export" / "backbone.safetensors").is_file()
    assert list((empty / "results").rglob("*.json")), "the run writes its record"
    compare = run("compare", "--results", "results", "--include-paper")
    assert compare.returncode == 0 and "vit_tiny" in compare.stdout, compare.stderr[-2000:]
