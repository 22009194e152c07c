# The embedded CPU config: MNIST test-split digits on 64 px grey canvases in the ADE20K layout (made on first use
# under data/ade_digits), 11 classes (background + 10 digits), about a minute on 2 cores. mmseg's UperNet with an
# FCN auxiliary head, as at paper scale, narrowed to the micro backbones. Why its sizes are these (digits packed by
# their strokes, background weighted a tenth, lr decay 0.5 per block), measured against other choices:
# docs/embedded-benchmark.md.
_base_ = ["_base_/upernet_timm.py", "_base_/ade20k.py", "_base_/default_runtime.py"]

dataset_name = "ade_digits"
embedded_data = dict(
    type="ade_digits",
    num_train=200,
    num_val=100,
    canvas=64,
    max_digits=5,
    min_digit=28,
    max_digit=40,
    placement="strokes",
)
data_root = "data/ade_digits"
classes = ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
palette = [[0, 0, 0]] + [[25 * i, 255 - 25 * i, (80 * i) % 256] for i in range(10)]
image_size = 64
norm_cfg = dict(type="BN", requires_grad=True)
# Digits cover about 10 % of the pixels: with plain cross-entropy a short run learns only background, so background
# weighs a tenth of a digit class (at a quarter, the random-init reference predicts background everywhere).
class_weight = [0.1] + [1.0] * 10
losses = dict(type="ClassWeightedCrossEntropyLoss", class_weight=class_weight, loss_weight=1.0)
aux_losses = dict(type="ClassWeightedCrossEntropyLoss", class_weight=class_weight, loss_weight=0.4)

model = dict(
    data_preprocessor=dict(size=(image_size, image_size)),
    # The adapter as benchmarks/sensitivity.py measured it: no output LayerNorm; the paper-scale configs add it.
    backbone=dict(drop_path_rate=0.0, out_norm=False),
    decode_head=dict(num_classes=11, channels=64, norm_cfg=norm_cfg, loss_decode=losses),
    auxiliary_head=dict(num_classes=11, channels=32, norm_cfg=norm_cfg, loss_decode=aux_losses),
    # Whole-image inference; `--cfg-options model.test_cfg.mode=slide` slides these windows instead.
    test_cfg=dict(mode="whole", crop_size=(image_size, image_size), stride=(image_size * 2 // 3, image_size * 2 // 3)),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(image_size, image_size), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=(image_size, image_size), cat_max_ratio=0.9),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
# ADE20KDataset fixes ADE20K's 150 class names; its base class takes ours, with ADE20K's suffixes and encoding.
dataset = dict(
    type="BaseSegDataset",
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix=".jpg",
    seg_map_suffix=".png",
    reduce_zero_label=True,
)
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline),
)
test_dataloader = val_dataloader

max_iters = 200
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
auto_scale_lr = dict(enable=True, base_batch_size=16)  # the lr is the one for 16 images per step
optim_wrapper = dict(
    type="OptimWrapper",
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    # As in the embedded detection: the new heads learn fast, the backbone's blocks slowly.
    paramwise_cfg=dict(layer_decay=dict(default=dict(rate=0.5, grouping="timm"))),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters),
]
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=2),  # for --resume
    visualization=dict(type="SegVisualizationHook", draw=False),
)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
randomness = dict(deterministic=True)  # deterministic kernels on a GPU: the same seed gives the same records
evaluate_tta = False
