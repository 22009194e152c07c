# UperNet 160k on ADE20K (16 images per step: 8 GPUs x 2).
# Follows the ConvNeXt repository's semantic_segmentation/configs/convnext/upernet_convnext_tiny_512_160k_ade20k_ms.py
# (and its _ss twin; the Swin repository's upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py is the same
# recipe): mmseg's ADE20K pipeline (short side 512 of a 2048x512 scale x0.5..2.0, 512x512 crops, flip, photometric
# distortion), UperNet with an FCN auxiliary head (weight 0.4), AdamW 1e-4 with the family's layer decay
# (_base_/schedule_160k.py), whole-image inference at 2048x512; single-scale mIoU every 16k iterations, and at the
# end multi-scale + flip mIoU over 0.5..1.75 x the 2048x512 scale (the _ms config's MultiScaleFlipAug; mmseg 1.x's own
# tta_pipeline rescales the original image instead). Deliberate differences: any timm backbone through TimmBackbone
# with a LayerNorm per output; stochastic depth 0.1 for every backbone (ConvNeXt-T: 0.4, Swin-T: 0.3).
_base_ = ["_base_/upernet_timm.py", "_base_/ade20k.py", "_base_/schedule_160k.py", "_base_/default_runtime.py"]

crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), test_cfg=dict(mode="whole"))
train_dataloader = dict(batch_size=2)
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [
                dict(type="Resize", scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
                for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
            ],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
evaluate_tta = True
