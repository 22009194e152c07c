# The embedded CPU config: MNIST test-split digits on 96 px grey canvases in the COCO layout (made on first use
# under data/coco_digits), 10 classes, about 85 s on 2 cores. mmdet's Mask R-CNN with FPN, RPN and RoI box and
# mask heads, as at paper scale, narrowed to the micro backbones (48 channels instead of 256, fewer RoIs). Why its
# sizes are these (300 iterations, 400 validation canvases, digits packed by their strokes), measured against other
# choices: docs/embedded-benchmark.md.
_base_ = ["_base_/mask_rcnn_timm.py", "_base_/coco_instance.py", "_base_/default_runtime.py"]

dataset_name = "coco_digits"
embedded_data = dict(
    type="coco_digits",
    num_train=200,
    num_val=400,
    canvas=96,
    max_digits=6,
    min_digit=28,
    max_digit=40,
    placement="strokes",
)
data_root = "data/coco_digits/"
classes = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
image_size = 96
width = 48  # FPN, RPN and RoI-head channels

model = dict(
    # The adapter as benchmarks/sensitivity.py measured it: no output LayerNorm (GroupNorm in the FPN instead) and,
    # for plain ViTs, evenly spaced blocks; the paper-scale configs follow their anchors instead.
    backbone=dict(drop_path_rate=0.0, out_norm=False, plain_blocks="spaced"),
    # GroupNorm after the FPN's convolutions: trained transformer blocks give maps an order of magnitude larger than
    # a fresh neck expects (and than an untrained backbone's), which makes a short fine-tune unstable.
    neck=dict(out_channels=width, norm_cfg=dict(type="GN", num_groups=8, requires_grad=True)),
    rpn_head=dict(in_channels=width, feat_channels=width, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_convs=2, num_classes=10),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=32)),  # a canvas holds ≤ 3 digits; RoIAlign's backward is the costliest op
    ),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(max_per_img=10)),
)
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="Pad", size=(image_size, image_size)),
    dict(type="PackDetInputs"),
]
# No Pad at test time: it would make the padding part of img_shape, and boxes clipped to that and scaled back to a
# non-square original fall outside it (mmdet's batch padding to 32 px does not have that effect).
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,  # decoding and augmenting beside the model's step: about 15 % faster per iteration on 2 cores
    persistent_workers=True,
    # Iteration-based training: mmengine restarts an epoch-based sampler's iterator with a 2 s pause at every pass
    # over the 200 canvases (10 s of an 85 s run).
    sampler=dict(type="InfiniteSampler", shuffle=True),
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
    num_workers=1,
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

max_iters = 300
warmup_iters = 20
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=warmup_iters, end=max_iters, eta_min=1e-5),
]
auto_scale_lr = dict(enable=True, base_batch_size=4)  # the lr is the one for 4 images per step
optim_wrapper = dict(
    type="OptimWrapper",
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    # timm's fine-grained layer groups at 0.5 for every family: the new heads learn fast, the pretrained blocks slowly
    paramwise_cfg=dict(layer_decay=dict(default=dict(rate=0.5, grouping="timm"))),
    clip_grad=dict(max_norm=5.0),
)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=20),
    # what `transfer det --resume` continues from: the last two, so that one is whole whatever a kill interrupts
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=2),
    visualization=dict(type="DetVisualizationHook", draw=False),
)
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
randomness = dict(deterministic=True)  # deterministic kernels on a GPU: the same seed gives the same records
