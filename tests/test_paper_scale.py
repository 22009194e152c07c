"""Every paper backbone × every paper-scale config takes real training steps at its real input size on the CPU.

The shipped configs run with execution-level options only (one iteration, batch 1 or 2, no loader workers, no
checkpoint; AMP falls back to float32 without a GPU), on small real data in COCO's and ADE20K's layouts
(``tests/paper_scale.py``), from untrained exports at the paper's widths, and write records. A pairing with no
sound protocol (an MLP-Mixer in Mask R-CNN, or in the 512 px UperNet) is refused in one line before any run.
``make test-paper`` runs this file (its cost: docs/development.md); ``make test`` leaves it out.
"""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")
from tests.conftest import make_untrained_export  # noqa: E402
from tests.paper_scale import (  # noqa: E402
    DET_SMOKE,
    FIXED_GRID,
    PAPER_BACKBONES,
    SEG_SMOKE,
    make_image_folder,
    make_paper_data,
)

pytestmark = pytest.mark.paper

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DET_CONFIGS = ("mask_rcnn_1x_coco.py", "mask_rcnn_3x_coco.py")


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory) -> Path:
    return make_paper_data(tmp_path_factory.mktemp("paper"))


@pytest.fixture(scope="module")
def paper_exports(tmp_path_factory) -> dict[str, Path]:
    """The paper's backbones at their real widths and 224 px, untrained (the random_init reference)."""
    root = tmp_path_factory.mktemp("paper_exports")
    return {name: make_untrained_export(name, root / name, "random_init") for name in PAPER_BACKBONES}


@pytest.fixture
def input_sizes(monkeypatch) -> list[tuple[bool, tuple[int, int]]]:
    """(training?, height × width) of every batch the adapter is given, observed by calling through."""
    from dropbench.transfer.backbone import TimmBackbone

    seen, forward = [], TimmBackbone.forward

    def observed(self, images):
        seen.append((self.training, tuple(images.shape[-2:])))
        return forward(self, images)

    monkeypatch.setattr(TimmBackbone, "forward", observed)
    return seen


def _records(results: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["metric"]: json.loads(p.read_text()) for p in results.glob("records/*.json")}


def _dense(cli, kind: str, export: Path, config: Path, work: Path, options: tuple[str, ...]):
    return cli(
        *("transfer", kind, "--backbone", export, "--config", config),
        *("--work-dir", work / "run", "--results", work / "results", "--cfg-options", *options),
    )


@pytest.mark.parametrize("config", DET_CONFIGS)
@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_mask_rcnn_takes_a_real_step_at_coco_sizes_or_refuses_a_fixed_grid(
    cli, paper_root, paper_exports, input_sizes, tmp_path, monkeypatch, backbone, config
):
    monkeypatch.chdir(paper_root)  # the configs read data/coco under the working folder
    code, out, err = _dense(cli, "det", paper_exports[backbone], CONFIGS / "detection" / config, tmp_path, DET_SMOKE)
    if backbone in FIXED_GRID:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "fixed token grid" in err, err
        assert not (tmp_path / "run").exists() and not input_sizes
        return
    assert code == 0, err
    assert "trains in float32" in out, "AMP falls back to float32 without a GPU, and says so"
    train = [size for training, size in input_sizes if training]
    val = [size for training, size in input_sizes if not training]
    # a 640×480 image: short side 480..800 (or a 384..600 crop resized to 480..800), long side ≤ 1333; padded to 32
    assert train and all(480 <= min(size) <= 800 + 31 and max(size) <= 1333 + 31 for size in train), train
    assert val == [(800, 1088)], "evaluated at 1333×800 (1067×800, padded to a multiple of 32)"
    records = _records(tmp_path / "results")
    assert set(records) == {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert all(math.isfinite(r["value"]) and r["protocol"] == Path(config).stem for r in records.values())


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_upernet_takes_a_real_step_on_ade20k_crops_or_a_fixed_grid_on_its_own(
    cli, paper_root, paper_exports, input_sizes, tmp_path, monkeypatch, backbone
):
    monkeypatch.chdir(paper_root)
    fixed = backbone in FIXED_GRID
    config = CONFIGS / "segmentation" / ("upernet_160k_ade20k_224.py" if fixed else "upernet_160k_ade20k.py")
    # multi-scale + flip at the real scales for one hierarchical backbone: 12 passes per image cost minutes each
    options = (*SEG_SMOKE, f"evaluate_tta={backbone == 'swin_femto'}")
    if fixed:
        code, _, err = _dense(
            cli,
            "seg",
            paper_exports[backbone],
            CONFIGS / "segmentation" / "upernet_160k_ade20k.py",
            tmp_path / "refused",
            options,
        )
        assert code == 2 and "fixed token grid" in err and "upernet_160k_ade20k_224.py" in err, err
        assert not input_sizes
    code, _, err = _dense(cli, "seg", paper_exports[backbone], config, tmp_path, options)
    assert code == 0, err
    crop = (224, 224) if fixed else (512, 512)
    train = [size for training, size in input_sizes if training]
    assert train == [crop], "one step on the config's crops"
    val = [size for training, size in input_sizes if not training]
    if fixed:
        assert val and all(size == crop for size in val), "sliding windows of the backbone's own size"
    else:
        assert val[0] == (512, 683), "whole-image inference at 2048×512 (the adapter pads to its multiple)"
    records = _records(tmp_path / "results")
    expected = {"mIoU", "mAcc", "aAcc"} | ({"mIoU_ms_flip"} if backbone == "swin_femto" else set())
    assert set(records) == expected and all(math.isfinite(r["value"]) for r in records.values())


@pytest.mark.parametrize("protocol", ["finetune", "linear"])
@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_classification_transfers_at_224_px(cli, paper_exports, tmp_path_factory, tmp_path, backbone, protocol):
    folder = tmp_path_factory.getbasetemp() / "paper_images"
    if not folder.is_dir():
        make_image_folder(folder)
    code, _, err = cli(
        *("transfer", "cls", "--backbone", paper_exports[backbone], "--dataset", "imagefolder"),
        *("--protocol", protocol, "--work-dir", tmp_path / "run", "--results", tmp_path / "results"),
        *(f"path={folder}", "epochs=1", "warmup_epochs=0", "batch_size=4", "workers=0", "feature_batch_size=4"),
    )
    assert code == 0, err
    records = _records(tmp_path / "results")
    calibration = {"ece", "nll", "brier", "ece_ts", "nll_ts", "brier_ts", "temperature"}
    assert set(records) == ({"top1", "chosen_c"} if protocol == "linear" else {"top1", *calibration})
    assert 0 <= records["top1"]["value"] <= 100
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["input_size"] == 224 and run["train_images"] == 12
