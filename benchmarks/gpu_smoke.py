"""The first minutes on a GPU node: every part of the GPU path once, cheapest first, each stage printing PASS or
FAIL (with its one line) and going on, so that one defect does not hide the next.

Stages, in order:
1. versions: torch, timm, CUDA, the device and its compute capability;
2. one graph: ``torch.compile`` (inductor) of ViT-T with its dropout rate changed every step, forward and backward:
   one graph, no graph break;
3. pretraining of ViT-T (dropout) and ConvNeXt-F (stochastic depth) on synthetic ImageNet-shaped batches, eager and
   compiled: gradient accumulation, mixup, EMA, bf16, a mid-epoch recovery point and the export;
4. resume: the same run killed (SIGKILL) at its first mid-epoch recovery point and resumed with ``--resume``;
5. ``benchmarks/gpu_check.py`` (dropbench against a plain timm loop, MFU), while the budget lasts.

Needs only torch and timm (no mm* package, no network): ``pip install --no-deps -e .`` from this checkout.

    python benchmarks/gpu_smoke.py                     # under 8 minutes on one H100
    python benchmarks/gpu_smoke.py --device cpu --small   # the same stages at micro size (the tests run it)
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.controller import DropController
from dropbench.pretrain.data import SYNTHETIC
from dropbench.pretrain.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {"vit": "early_dropout", "convnext": "early_sd"}  # what each family schedules


class Smoke:
    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, torch.device(args.device)
        self.small = args.small
        self.backbones = ["vit_micro", "convnext_micro"] if args.small else ["vit_tiny", "convnext_femto"]
        self.compile = "aot_eager" if args.small else "inductor"
        self.started = time.perf_counter()
        self.failed: list[str] = []

    def stage(self, name: str, run: Callable[[], str]) -> None:
        left = self.args.budget - (time.perf_counter() - self.started)
        if left <= 0:
            print(f"SKIP {name}: the {self.args.budget:.0f} s budget is spent", flush=True)
            return
        start = time.perf_counter()
        try:
            detail = run()
        except Exception as err:  # noqa: BLE001 - a failed stage is reported, and the next one runs
            lines = [line for line in str(err).strip().splitlines() if line.strip()]
            detail = f"{type(err).__name__}: {lines[-1] if lines else ''}"
            self.failed.append(name)
            print(f"FAIL {name} ({time.perf_counter() - start:.0f} s): {detail}", flush=True)
            return
        print(f"PASS {name} ({time.perf_counter() - start:.0f} s): {detail}", flush=True)

    def versions(self) -> str:
        device = "CPU"
        if self.device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(self.device)
            device = f"{torch.cuda.get_device_name(self.device)} (sm_{major}{minor}, CUDA {torch.version.cuda})"
        return f"torch {torch.__version__}, timm {timm.__version__}, {device}"

    def one_graph(self) -> str:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        backbone = BackboneConfig.load(self.backbones[0])
        model = backbone.create_model(10, dropout=0.1).to(self.device).train()
        controller = DropController(model, {"dropout": (np.linspace(0.1, 0.0, 4), 0.1)}, tensor_rates=True)
        compiled = torch.compile(model, backend=self.compile)
        size = backbone.input_size
        for step in range(4):
            controller.step(step)
            compiled(torch.randn(2, 3, size, size, device=self.device)).float().sum().backward()
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        if graphs != 1 or breaks:
            raise RuntimeError(
                f"{graphs} graphs and {breaks} graph breaks over 4 rates: {dict(counters['graph_break'])}"
            )
        return f"{self.compile}: 1 graph, 0 breaks over 4 steps of changing rates"

    def overrides(self, compile_backend: str | None) -> dict:
        batch = 4 if self.small else 128
        return {
            "epochs": 2,
            "warmup_epochs": 1,
            "batch_size": 2 * batch,  # two micro-batches per update
            "per_device_batch": batch,
            "train_subset": (40 if self.small else 8) * batch,  # updates enough to be killed between two
            "val_subset": batch,
            "aa": None,
            "mixup": 0.8,
            "cutmix": 1.0,
            "model_ema": True,
            "model_ema_decay": 0.99,
            "recovery_every": 2,
            "workers": 2 if self.small else 8,
            "compile": compile_backend or False,
            "log_every": 1,
        }

    def pretraining(self, name: str, compile_backend: str | None) -> str:
        backbone = BackboneConfig.load(name)
        regime = Regime.load(REGIMES[backbone.model.split("_")[0]])
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            recipe = Recipe.load("basic", self.overrides(compile_backend))
            summary = pretrain(backbone, regime, recipe, SYNTHETIC, run, results_dir=None, device=str(self.device))
            with (run / "log.csv").open() as f:
                rows = list(csv.DictReader(f))
            if not (run / "export" / "backbone.safetensors").is_file():
                raise RuntimeError("no export was written")
        return f"train_loss {summary.train_loss:.3f}, {float(rows[-1]['train_images_per_s']):.0f} images/s"

    def resume(self, name: str) -> str:
        backbone = BackboneConfig.load(name)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            command = [
                *(sys.executable, "-m", "dropbench.cli", "pretrain", "--backbone", name, "--data", SYNTHETIC),
                *("--regime", REGIMES[backbone.model.split("_")[0]], "--recipe", "basic", "--out", str(run)),
                *("--results", str(Path(tmp) / "results"), "--device", str(self.device)),
                *(f"{key}={_value(value)}" for key, value in self.overrides(None).items()),
            ]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while not (run / "checkpoint.pt").exists() and process.poll() is None:
                time.sleep(0.005)
            process.kill()
            _, err = process.communicate()
            if process.returncode != -9:
                raise RuntimeError(
                    f"it ended (exit {process.returncode}) before its first recovery point: {err[-300:]}"
                )
            resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
            if resumed.returncode != 0:
                raise RuntimeError(resumed.stderr.strip().splitlines()[-1])
            if not (run / "export" / "backbone.safetensors").is_file():
                raise RuntimeError("the resumed run wrote no export")
        return "killed at its first mid-epoch recovery point, resumed to its export"

    def gpu_check(self) -> str:
        arguments = ["--device", str(self.device)]
        if self.small:
            arguments += ["--backbones", "vit_micro", "--steps", "1", "--batch", "2", "--compile", "aot_eager"]
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *arguments], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1])
        print("\n".join(line for line in result.stdout.splitlines() if line.startswith(("|", "("))), flush=True)
        return "the table above"

    def run(self) -> int:
        self.stage("versions", self.versions)
        self.stage("one graph", self.one_graph)
        for name in self.backbones:
            for backend in (None, self.compile):
                self.stage(f"pretrain {name} {backend or 'eager'}", lambda n=name, b=backend: self.pretraining(n, b))
        for name in self.backbones:
            self.stage(f"resume {name}", lambda n=name: self.resume(n))
        self.stage("gpu_check", self.gpu_check)
        total = time.perf_counter() - self.started
        print(f"{'FAILED: ' + ', '.join(self.failed) if self.failed else 'all passed'} in {total:.0f} s", flush=True)
        return 1 if self.failed else 0


def _value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="micro backbones at 32 px, aot_eager: a dry run")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later stages are skipped past it")
    return Smoke(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
