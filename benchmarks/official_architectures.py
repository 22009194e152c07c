"""The authors' own model classes against ``dropbench import --from official``: for each of the six released
architectures, build the model with the code of a local clone of facebookresearch/dropout, perturb every parameter
(so that LayerScale's 1e-6 and LayerNorm's ones cannot hide a misplaced tensor), save it in the format their
``main.py`` saves, import it, and compare the imported timm model's logits with the original's on the same input.

    git clone https://github.com/facebookresearch/dropout /path/to/dropout
    python benchmarks/official_architectures.py --authors-repo /path/to/dropout [--names vit_tiny swin_femto]

The authors' side runs in its own process: their modules register models under names timm also uses
(``convnext_femto``), which must not replace timm's entries in the process that imports. Nothing is downloaded.
"""

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODULES = {
    "vit_tiny": "models.vision_transformer",
    "vit_base": "models.vision_transformer",
    "mixer_s32": "models.mlp_mixer",
    "mixer_b16": "models.mlp_mixer",
    "swin_femto": "models.swin_transformer",
    "convnext_femto": "models.convnext",
}
ARGS = dict(dropout=0.1, drop_path=0.0, drop_mode="early", drop_schedule="linear", cutoff_epoch=50, epochs=300)
ARGS |= dict(mixup=0.8, cutmix=1.0, input_size=224, seed=0)


def _their_model(repo: str, name: str) -> torch.nn.Module:
    """Their registered function builds the model; their Mixer-B/16 goes through a timm 0.5 builder that timm 1.x
    no longer has, so its class is called with the arguments their function passes (patch 16, 12 blocks, 768)."""
    import timm.models.helpers

    if not hasattr(timm.models.helpers, "overlay_external_default_cfg"):  # imported by their Mixer file, unused
        timm.models.helpers.overlay_external_default_cfg = None
    sys.path.insert(0, repo)
    module = importlib.import_module(MODULES[name])
    if name == "mixer_b16":
        return module.MlpMixer(patch_size=16, num_blocks=12, embed_dim=768, num_classes=1000)
    return getattr(module, name)(num_classes=1000)


def authors_side(repo: str, name: str, out: Path) -> None:
    """Their model, perturbed, saved as their ``main.py`` saves a checkpoint; the input and logits beside it."""
    model = _their_model(repo, name).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        images = torch.randn(2, 3, 224, 224, generator=generator)
        logits = model(images)
    checkpoint = {"model": model.state_dict(), "optimizer": {}, "epoch": 299, "scaler": {}}
    checkpoint["args"] = argparse.Namespace(model=name, **ARGS)
    torch.save(checkpoint, out / "checkpoint.pth")
    torch.save({"images": images, "logits": logits, "keys": len(model.state_dict())}, out / "reference.pt")


def dropbench_side(name: str, work: Path) -> tuple[float, float]:
    """Import the checkpoint through the CLI; the largest absolute logit difference from the original's, and the
    largest absolute logit (the scale it is relative to)."""
    from dropbench.core.export import load_exported_model

    command = [sys.executable, "-m", "dropbench.cli", "import", "--from", "official", str(work / "checkpoint.pth")]
    subprocess.run([*command, "--out", str(work / "export")], check=True)
    model, _ = load_exported_model(work / "export")
    reference = torch.load(work / "reference.pt", weights_only=True)
    with torch.no_grad():
        logits = model.eval()(reference["images"])
    return (logits - reference["logits"]).abs().max().item(), reference["logits"].abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-repo", required=True, help="a local clone of facebookresearch/dropout")
    parser.add_argument("--names", nargs="+", default=list(MODULES), choices=list(MODULES))
    parser.add_argument("--authors-side", nargs=2, metavar=("NAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.authors_side:
        authors_side(args.authors_repo, args.authors_side[0], Path(args.authors_side[1]))
        return
    print("| architecture | tensors in their state dict | max abs logit difference | max abs logit |")
    print("|---|---|---|---|")
    worst = 0.0
    for name in args.names:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            own = [sys.executable, __file__, "--authors-repo", args.authors_repo, "--authors-side", name, tmp]
            subprocess.run(own, check=True)
            difference, scale = dropbench_side(name, work)
            keys = torch.load(work / "reference.pt", weights_only=True)["keys"]
        worst = max(worst, difference)
        print(f"| {name} | {keys} | {difference:.2e} | {scale:.1f} |", flush=True)
    print(f"\nworst {worst:.2e} (goal ≤ 1e-5)")
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
