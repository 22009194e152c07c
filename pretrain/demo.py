"""The embedded default: the micro ViT pretrained on MNIST under no / standard / early / late dropout."""

from pathlib import Path

from pretrain.config import BackboneConfig, Recipe, Regime
from pretrain.data import MNIST
from pretrain.train import pretrain

DEMO_BACKBONE = "vit_micro"
DEMO_REGIMES = ("no_dropout", "standard_dropout", "early_dropout", "late_dropout")
DEMO_RECIPE = "cpu"


def run_demo(runs_dir: Path, results_dir: Path) -> list[dict]:
    """Pretrain each regime (a finished one is not run again) and print the final loss and top-1."""
    backbone, recipe = BackboneConfig.load(DEMO_BACKBONE), Recipe.load(DEMO_RECIPE)
    rows = []
    for name in DEMO_REGIMES:
        run_dir = runs_dir / f"{DEMO_BACKBONE}-{name}"
        finished = (run_dir / "export" / "backbone.json").is_file()
        print(f"── {DEMO_BACKBONE} / {name}" + (" (finished earlier)" if finished else ""), flush=True)
        summary = pretrain(
            backbone,
            Regime.load(name),
            recipe,
            MNIST,
            run_dir,
            results_dir=results_dir,
            resume=run_dir.exists(),
        )
        rows.append({"regime": name, "train_loss": summary.train_loss, "val_top1": summary.val_top1})
    print(f"\n{DEMO_BACKBONE} on MNIST, recipe '{recipe.name}' ({recipe.epochs} epochs)")
    print(f"{'regime':<18} {'final train loss':>16} {'val top-1 %':>12}")
    for row in rows:
        print(f"{row['regime']:<18} {row['train_loss']:>16.4f} {row['val_top1']:>12.2f}")
    return rows
