import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from safetensors.torch import load_file, save_file

from dropbench.core.errors import UserInputError
from dropbench.core.readers import load_mnist

from .conftest import MICRO_BACKBONES

mmdet = pytest.importorskip("mmdet")
from dropbench.transfer.backbone import TimmBackbone, assign_levels  # noqa: E402
from dropbench.transfer.detection import validate_coco  # noqa: E402
from dropbench.transfer.embedded_data import CanvasSpec, make_coco_digits, make_from_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"


@pytest.fixture(scope="session")
def coco_digits(tmp_path_factory) -> Path:
    """The embedded config's data, fewer of them: a run with the same settings takes it as it is."""
    from mmengine.config import Config

    embedded = Config.fromfile(CONFIGS / "mask_rcnn_cpu.py").embedded_data.to_dict() | {"num_train": 16, "num_val": 8}
    return make_from_config(embedded, tmp_path_factory.mktemp("data") / "coco_digits", "coco_digits")


@pytest.mark.parametrize(
    "config",
    [*sorted(CONFIGS.glob("*.py")), *sorted((CONFIGS.parent / "segmentation").glob("*.py"))],
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_a_shipped_config_loads_with_the_same_bases_as_mmengine_finds_them(config):
    """``load_config`` takes ``package::_base_/...`` files without mmengine's metafile lookup: the same files, the
    same config."""
    from mmengine.config import Config

    from dropbench.transfer.mm_runner import _base_configs_found_directly

    if config.parent.name == "segmentation":
        pytest.importorskip("mmseg")
    with _base_configs_found_directly():
        ours = Config.fromfile(str(config))
    theirs = Config.fromfile(str(config))
    assert ours.to_dict() == theirs.to_dict() and ours.text == theirs.text


@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_the_adapter_gives_fpn_strides_and_its_declared_channels_for_every_family(exports, family):
    adapter = TimmBackbone(str(exports[family]))
    size = 32 if family == "mixer_micro" else 128  # a Mixer takes its pretraining size only
    features = adapter(torch.randn(2, 3, size, size))
    assert [f.shape[-1] for f in features] == [size // s for s in (4, 8, 16, 32)]
    assert [f.shape[1] for f in features] == adapter.out_channels
    assert all(torch.isfinite(f).all() for f in features)


def test_plain_vits_share_one_native_stride_and_get_a_simple_pyramid_from_the_blocks_the_anchors_take(exports):
    adapter = TimmBackbone(str(exports["vit_micro"]))
    assert set(adapter.native_strides) == {8.0} and len(adapter.native_strides) == 4
    assert adapter.levels == [0, 1, 2, 3], "the shallowest block for stride 4, the last for stride 32"
    assert TimmBackbone(str(exports["vit_micro"]), plain_blocks="last").levels == [3, 3, 3, 3]
    assert assign_levels([16.0] * 12, (4, 8, 16, 32)) == [2, 5, 8, 11]  # ViT-T: mmseg's configs/vit out_indices
    assert assign_levels([16.0] * 12, (4, 8, 16, 32), "last") == [11] * 4  # ViTDet's simple feature pyramid
    assert assign_levels([16.0] * 12, (16,)) == [11], "a single output takes the last block"
    assert assign_levels([4.0, 8.0, 16.0, 32.0], (4, 8, 16, 32)) == [0, 1, 2, 3]
    assert assign_levels([4.0, 8.0, 16.0, 32.0], (8, 64)) == [1, 3]


@pytest.mark.parametrize("family", ["vit_micro", "swin_micro", "convnext_micro", "mixer_micro"])
def test_every_exported_tensor_is_loaded(exports, family):
    adapter = TimmBackbone(str(exports[family]))
    exported = load_file(exports[family] / "backbone.safetensors")
    loaded = adapter.model.state_dict()
    assert loaded, "the adapter keeps the backbone's tensors"
    for name, tensor in loaded.items():
        assert torch.equal(tensor, exported[name]), name


def test_every_output_is_layer_normalised_over_channels_unless_switched_off(exports):
    normed = TimmBackbone(str(exports["convnext_micro"])).eval()
    raw = TimmBackbone(str(exports["convnext_micro"]), out_norm=False).eval()
    with torch.no_grad():
        for feature in normed(torch.randn(2, 3, 64, 64)):
            torch.testing.assert_close(feature.mean(1), torch.zeros_like(feature[:, 0]), atol=1e-5, rtol=0)
            torch.testing.assert_close(
                feature.var(1, unbiased=False), torch.ones_like(feature[:, 0]), atol=1e-3, rtol=0
            )
        assert not torch.allclose(raw(torch.randn(2, 3, 64, 64))[3].mean(1), torch.zeros(2, 2, 2), atol=1e-3)


def test_a_fixed_grid_backbone_is_refused_by_mask_rcnn_before_anything_is_written(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(
        *("transfer", "det", "--backbone", exports["mixer_micro"], "--config", CONFIGS / "mask_rcnn_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results"),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fixed token grid" in err and "Mask R-CNN" in err and "upernet_160k_ade20k_224.py" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_an_export_missing_a_tensor_fails_loudly(exports, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(exports["vit_micro"], broken)
    tensors = load_file(broken / "backbone.safetensors")
    del tensors["blocks.1.attn.qkv.weight"]
    save_file(tensors, broken / "backbone.safetensors")
    with pytest.raises(UserInputError, match="not loaded"):
        TimmBackbone(str(broken))


def test_layer_decay_gives_earlier_layers_smaller_learning_rates(exports):
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from torch import nn

    model = nn.Module()
    model.backbone = TimmBackbone(str(exports["vit_micro"]))
    model.head = nn.Linear(4, 2)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type="TimmLayerDecayOptimizerConstructor",
            optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
            paramwise_cfg=dict(layer_decay=dict(default=dict(rate=0.5, grouping="timm"))),
        )
    )
    optimizer = constructor(model).optimizer
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == sum(1 for _ in model.parameters()), "every parameter in exactly one group"
    vit = model.backbone.model
    first, last = vit.blocks[0].attn.qkv.weight, vit.blocks[-1].attn.qkv.weight
    assert lr_of[id(first)] < lr_of[id(last)] <= 1e-3
    assert lr_of[id(vit.blocks[-2].attn.qkv.weight)] == pytest.approx(lr_of[id(last)] * 0.5)
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-3)


def test_the_generated_coco_json_round_trips_through_pycocotools(coco_digits):
    ann_file = coco_digits / "annotations" / "instances_train2017.json"
    coco = COCO(str(ann_file))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [str(d) for d in range(10)]
    assert len(coco.getImgIds()) == 16 and len(coco.getAnnIds()) >= 16
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    validate_coco(ann_file, coco_digits / "train2017", tuple(str(d) for d in range(10)), "ann_file")


@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_the_fine_tunes_drop_path_rate_reaches_the_adapters_model(exports, family):
    from timm.layers import DropPath

    def rates(adapter) -> list[float]:
        return [m.drop_prob for m in adapter.modules() if isinstance(m, DropPath) and m.drop_prob > 0]

    assert not rates(TimmBackbone(str(exports[family]))), "exported at rate 0, built at rate 0"
    scheduled = rates(TimmBackbone(str(exports[family]), drop_path_rate=0.2))
    assert scheduled and max(scheduled) == pytest.approx(0.2, abs=1e-6), "timm's rule ends at the rate given"


def test_train_and_val_canvases_use_disjoint_mnist_test_digits_deterministically(tmp_path):
    first = make_coco_digits(tmp_path / "a", 3, 2, CanvasSpec(seed=5))
    second = make_coco_digits(tmp_path / "b", 3, 2, CanvasSpec(seed=5))
    sources = {}
    for split in ("train", "val"):
        name = f"annotations/instances_{split}2017.json"
        assert (first / name).read_text() == (second / name).read_text()
        annotations = json.loads((first / name).read_text())["annotations"]
        sources[split] = {a["mnist_test_index"] for a in annotations}
    assert sources["train"] and sources["val"]
    assert not sources["train"] & sources["val"], "no MNIST digit is in both splits"
    assert max(sources["train"]) < 5000 <= min(sources["val"]), "train draws from the first half of the test split"
    _, labels = load_mnist("test")
    for annotation in json.loads((first / "annotations/instances_val2017.json").read_text())["annotations"]:
        assert annotation["category_id"] == int(labels[annotation["mnist_test_index"]]) + 1


def test_stroke_placement_packs_more_digits_whose_strokes_keep_apart():
    from dropbench.transfer.embedded_data import _grow, compose_canvas

    digits, labels = load_mnist("test")
    counts = {}
    for placement in ("boxes", "strokes"):
        spec = CanvasSpec(canvas=64, max_digits=5, min_digit=28, max_digit=40, placement=placement)
        rng = np.random.default_rng(0)
        counts[placement] = 0
        for _ in range(40):
            _, instances = compose_canvas(rng, digits, labels, spec)
            counts[placement] += len(instances)
            inks = [mask | fringe for _, mask, fringe, _ in instances]
            g = spec.gap
            for i, first in enumerate(inks):
                for second in inks[i + 1 :]:
                    assert not (_grow(first, g)[g:-g, g:-g] & second).any(), "strokes closer than the gap"
    assert counts["strokes"] >= 1.5 * counts["boxes"]


@pytest.mark.parametrize(
    "field, value", [("placement", "grid"), ("gap", -1), ("max_digits", 0), ("canvas", "96"), ("num_val", 2.5)]
)
def test_a_bad_embedded_data_field_is_refused_naming_it(tmp_path, field, value):
    with pytest.raises(UserInputError, match=f"embedded_data.{field}"):
        make_from_config({"type": "coco_digits", field: value}, tmp_path / "coco", "coco_digits")
    assert not (tmp_path / "coco").exists()


def test_mmdets_coco_dataset_loads_the_generated_data_unchanged(coco_digits):
    from mmdet.datasets import CocoDataset

    dataset = CocoDataset(
        data_root=str(coco_digits),
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        metainfo=dict(classes=tuple(str(d) for d in range(10))),
        pipeline=[],
        test_mode=True,
    )
    assert len(dataset) == 8
    sample = dataset[0]
    assert sample["instances"] and all(0 <= i["bbox_label"] < 10 for i in sample["instances"])
    assert all(isinstance(i["mask"], dict) for i in sample["instances"])  # RLE, as in real COCO


def _write_coco(tmp_path: Path, source: Path, edit) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(source, root)
    ann_file = root / "annotations" / "instances_val2017.json"
    coco = json.loads(ann_file.read_text())
    edit(coco)
    ann_file.write_text(json.dumps(coco))
    return root


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c: c["annotations"][0].update(image_id=999), "unknown image 999"),
        (lambda c: c["annotations"][0].update(bbox=[3, 4, -2, 5]), "negative"),
        (lambda c: c["annotations"][0].update(category_id=77), "category_id 77"),
        (lambda c: c["categories"][0].update(name="zero"), "not categories"),
        (lambda c: c["annotations"][0].update(bbox=[90, 4, 20, 5]), "outside its 96×96 image"),
        (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "fewer than 3 points"),
        (lambda c: c["images"][0].update(file_name="gone.png"), "missing"),
    ],
)
def test_bad_coco_files_are_named(cli, exports, coco_digits, tmp_path, edit, words, monkeypatch):
    root = _write_coco(tmp_path, coco_digits, edit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coco_digits").symlink_to(root)
    work = tmp_path / "work"
    code, _, err = cli(
        "transfer",
        "det",
        "--backbone",
        exports["vit_micro"],
        "--config",
        CONFIGS / "mask_rcnn_cpu.py",
        "--work-dir",
        work,
        "--results",
        tmp_path / "results",
        "--cfg-options",  # the sizes of the coco_digits fixture, so that the embedded data is taken as it is
        "embedded_data.num_train=16",
        "embedded_data.num_val=8",
        "train_cfg.max_iters=1",
    )
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not work.exists()


def test_a_config_key_typo_is_named(cli, exports, tmp_path):
    code, _, err = cli(
        "transfer",
        "det",
        "--backbone",
        exports["vit_micro"],
        "--config",
        CONFIGS / "mask_rcnn_cpu.py",
        "--work-dir",
        tmp_path / "w",
        "--cfg-options",
        "train_cfg.max_iter=5",
    )
    assert code == 2 and err.count("\n") == 1 and "max_iter" in err and "did you mean 'max_iters'" in err


def test_a_sidecar_naming_an_unknown_model_is_refused(cli, exports, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(exports["vit_micro"], export)
    sidecar = json.loads((export / "backbone.json").read_text())
    (export / "backbone.json").write_text(json.dumps(sidecar | {"model": "vit_teeny_patch16_224"}))
    code, _, err = cli(
        "transfer", "det", "--backbone", export, "--config", CONFIGS / "mask_rcnn_cpu.py", "--work-dir", tmp_path / "w"
    )
    assert code == 2 and "vit_teeny_patch16_224" in err and err.count("\n") == 1


def test_weights_that_do_not_match_the_sidecar_are_refused(cli, exports, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(exports["vit_micro"], export)
    shutil.copy(exports["convnext_micro"] / "backbone.safetensors", export / "backbone.safetensors")
    code, _, err = cli(
        "transfer", "det", "--backbone", export, "--config", CONFIGS / "mask_rcnn_cpu.py", "--work-dir", tmp_path / "w"
    )
    assert code == 2 and "do not fit" in err and err.count("\n") == 1


@pytest.mark.parametrize("config", ["mask_rcnn_1x_coco.py", "mask_rcnn_3x_coco.py"])
def test_the_paper_scale_configs_build_mask_rcnn_on_an_export(exports, config):
    from mmdet.registry import MODELS

    from dropbench.transfer.detection import DETECTION
    from dropbench.transfer.mm_runner import configure

    cfg = configure(DETECTION, exports["convnext_micro"], CONFIGS / config, [])  # as a run does
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "MaskRCNN" and cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.train_cfg.max_epochs == (12 if "1x" in config else 36)


@pytest.mark.slow
def test_a_short_cpu_fine_tune_writes_finite_box_and_mask_ap_records(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded config makes data/coco_digits under the working folder
    code, _, err = cli(
        "transfer",
        "det",
        "--backbone",
        exports["vit_micro"],
        "--config",
        CONFIGS / "mask_rcnn_cpu.py",
        "--work-dir",
        tmp_path / "work",
        "--results",
        tmp_path / "results",
        "--cfg-options",
        "train_cfg.max_iters=4",
        "embedded_data.num_train=8",
        "embedded_data.num_val=4",
        "train_dataloader.batch_size=2",  # half the batch the config's lr is for
    )
    assert code == 0, err
    (log,) = (tmp_path / "work").glob("*/*.log")
    assert "Scaling the original LR by 0.5" in log.read_text(), "auto_scale_lr follows the actual total batch"
    records = {
        json.loads(p.read_text())["metric"]: json.loads(p.read_text())
        for p in (tmp_path / "results" / "records").glob("*.json")
    }
    assert set(records) == {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    for record in records.values():
        assert math.isfinite(record["value"]) and 0 <= record["value"] <= 100 and record["unit"] == "%"
        assert record["task"] == "detection" and record["dataset"] == "coco_digits"
        assert record["regime"] == "no_dropout" and record["stage"] == "transfer"


def _losses(work_dir: Path) -> list[str]:
    """The training losses mmengine logged, in order."""
    (log,) = work_dir.glob("*/*.log")
    return re.findall(r"Iter\(train\).*?  loss: (\S+)", log.read_text())


@pytest.mark.slow
def test_the_transfer_seed_makes_a_run_repeatable_and_each_seed_a_record_of_its_own(
    cli, exports, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    options = ["train_cfg.max_iters=6", "embedded_data.num_train=8", "embedded_data.num_val=4"]
    options += ["default_hooks.logger.interval=1"]

    def run(seed: int, results: str, work: str) -> dict[str, float]:
        code, _, err = cli(
            *("transfer", "det", "--backbone", exports["vit_micro"], "--config", CONFIGS / "mask_rcnn_cpu.py"),
            *("--work-dir", tmp_path / work, "--results", tmp_path / results, "--seed", seed),
            *("--cfg-options", *options),
        )
        assert code == 0, err
        found = (tmp_path / results / "records").glob(f"*__tseed{seed}__*.json")
        return {json.loads(p.read_text())["metric"]: json.loads(p.read_text())["value"] for p in found}

    first, again, other = run(0, "a", "w0"), run(0, "b", "w0b"), run(1, "a", "w1")
    assert first == again and len(first) == 6
    assert len(_losses(tmp_path / "w0")) == 6 and _losses(tmp_path / "w0") == _losses(tmp_path / "w0b")
    assert _losses(tmp_path / "w0") != _losses(tmp_path / "w1"), "another seed trains differently"
    assert len(other) == 6 and len(list((tmp_path / "a" / "records").glob("*.json"))) == 12
    code, out, _ = cli("compare", "--results", tmp_path / "a", "--format", "csv")
    table = [line for line in out.splitlines() if "box_AP," in line]
    assert code == 0 and len(table) == 1 and ",2," in table[0], "both seeds are one cell with n=2"


def test_embedded_data_is_reused_with_the_same_settings_and_remade_with_others(tmp_path):
    root = make_coco_digits(tmp_path / "coco", 3, 2)
    stamp = (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns
    assert make_coco_digits(root, 3, 2) == root
    assert (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns == stamp
    make_coco_digits(root, 5, 2)
    assert len(json.loads((root / "annotations" / "instances_train2017.json").read_text())["images"]) == 5
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".coco.lock", "coco"], "no temp or stale folder left behind, only the lock's file"


def test_processes_that_make_the_same_embedded_data_at_once_each_find_it_whole_when_they_return(tmp_path):
    """The ranks of one torchrun each make the data: none may move the folder aside while another reads it."""
    from concurrent.futures import ThreadPoolExecutor

    def make_then_count():
        root = make_coco_digits(tmp_path / "coco", 6, 2)
        return len(list((root / "train2017").glob("*.png")))

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: make_then_count(), range(4)))
    assert counts == [6, 6, 6, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".coco.lock", "coco"]


def test_an_evaluation_without_predictions_is_recorded_as_zero_and_a_missing_metric_is_an_error():
    from dropbench.transfer.detection import DETECTION
    from dropbench.transfer.mm_runner import recorded_values
    from dropbench.transfer.segmentation import SEGMENTATION

    logged = []
    zeros = recorded_values(DETECTION, {}, logged.append)
    assert set(zeros) == {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert set(zeros.values()) == {0.0} and "predicted nothing" in logged[0]
    box_only = {key: 0.5 for key in DETECTION.metrics if key.startswith("coco/bbox")}
    with pytest.raises(UserInputError, match="coco/segm_mAP") as err:
        recorded_values(DETECTION, box_only)
    assert err.value.field == "val_evaluator"
    with pytest.raises(UserInputError, match="mIoU"):
        recorded_values(SEGMENTATION, {})  # mmseg always reports: nothing back is an error, not a zero
    assert recorded_values(SEGMENTATION, {"mIoU": 40.0, "mAcc": 50.0, "aAcc": 90.0}) == {
        "mIoU": 40.0,
        "mAcc": 50.0,
        "aAcc": 90.0,
    }


@pytest.mark.slow
def test_a_fine_tune_that_detects_nothing_records_ap_zero(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(
        *("transfer", "det", "--backbone", exports["vit_micro"], "--config", CONFIGS / "mask_rcnn_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results", "--cfg-options"),
        *("train_cfg.max_iters=2", "embedded_data.num_train=4", "embedded_data.num_val=4"),
        "model.test_cfg.rcnn.score_thr=1.01",  # no score reaches it: no detections at all
    )
    assert code == 0, err
    values = {
        json.loads(p.read_text())["metric"]: json.loads(p.read_text())["value"]
        for p in (tmp_path / "results" / "records").glob("*.json")
    }
    assert values == dict.fromkeys(("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"), 0.0)
    logs = "".join(p.read_text() for p in (tmp_path / "work").rglob("*.log"))
    assert "predicted nothing" in logs and logs.count("Iter(val) [") == 1, "evaluated once"
