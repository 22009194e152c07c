import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
torch.set_num_threads(os.cpu_count() or 1)

MICRO_BACKBONES = ["vit_micro", "swin_micro", "convnext_micro", "mixer_micro"]


@pytest.fixture
def cli(capsys):
    """Run the real ``dropbench`` entry point in-process; returns (exit code, stdout, stderr)."""
    from dropbench.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
