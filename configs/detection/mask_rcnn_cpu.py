# The embedded CPU config: MNIST test-split digits on 128 px canvases in the COCO layout (made on first use
# under data/coco_digits), 10 classes, a few minutes on 2 cores. Same model as the paper-scale configs.
_base_ = ["_base_/mask_rcnn_timm.py", "_base_/coco_instance.py", "_base_/default_runtime.py"]

dataset_name = "coco_digits"
embedded_data = dict(type="coco_digits", num_train=200, num_val=50, canvas=128)
data_root = "data/coco_digits/"
classes = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
image_size = 128

model = dict(
    backbone=dict(img_size=image_size, drop_path_rate=0.0),
    rpn_head=dict(anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_head=dict(num_classes=10), mask_head=dict(num_classes=10)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)),
)
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="Pad", size=(image_size, image_size)),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="Pad", size=(image_size, image_size)),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017/"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val2017.json")
test_evaluator = val_evaluator

max_iters = 150
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=20, end=max_iters, eta_min=1e-5),
]
optim_wrapper = dict(
    type="OptimWrapper",
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10),
    checkpoint=None,  # the fine-tuned weights are not needed for the records; saves time on a CPU
    visualization=dict(type="DetVisualizationHook", draw=False),
)
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
