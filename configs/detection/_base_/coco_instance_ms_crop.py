# The multi-scale training of the Swin Transformer and ConvNeXt Mask R-CNN configs (both repositories' *_mstrain_
# 480-800_adamw_{1x,3x}* files; "from DETR / Sparse R-CNN"), in mmdet 3.x's transforms as mmdet's own
# configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py writes it: a flip, then either a short side of
# 480..800 (step 32, long side ≤ 1333), or a short side of 400/500/600, a random crop of 384..600 and again a short
# side of 480..800.
_base_ = "coco_instance.py"
multi_scale = [(1333, 480 + 32 * i) for i in range(11)]
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(
        type="RandomChoice",
        transforms=[
            [dict(type="RandomChoiceResize", scales=multi_scale, keep_ratio=True)],
            [
                dict(type="RandomChoiceResize", scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
                dict(type="RandomChoiceResize", scales=multi_scale, keep_ratio=True),
            ],
        ],
    ),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
