# Mask R-CNN 1x on COCO 2017 (16 images per step: 8 GPUs x 2), multi-scale training.
# Follows the Swin Transformer Object Detection repository's
# configs/swin/mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_1x_coco.py: its multi-scale + crop
# augmentation (_base_/coco_instance_ms_crop.py), AdamW 1e-4, weight decay 0.05, 12 epochs with steps at 8 and 11,
# mixed precision, single-scale 1333x800 evaluation. Deliberate differences: any timm backbone through TimmBackbone
# with a LayerNorm per output; layer decay per family as its own anchor (_base_/schedule_1x.py); stochastic depth
# 0.1 for every backbone (Swin-T: 0.2).
_base_ = [
    "_base_/mask_rcnn_timm.py",
    "_base_/coco_instance_ms_crop.py",
    "_base_/schedule_1x.py",
    "_base_/default_runtime.py",
]
