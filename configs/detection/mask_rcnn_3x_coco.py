# Mask R-CNN 3x on COCO 2017 (16 images per step: 8 GPUs x 2), multi-scale training.
# Follows the ConvNeXt repository's object_detection/configs/convnext/
# mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py (and the Swin repository's
# *_mstrain_480-800_adamw_3x_coco.py, the same recipe): the multi-scale + crop augmentation
# (_base_/coco_instance_ms_crop.py), AdamW 1e-4, weight decay 0.05, 36 epochs with steps at 27 and 33, warm-up 500
# iterations, mixed precision, ConvNeXt's layer-wise decay 0.95 over 6 ids. Deliberate differences: as the 1x
# config (stochastic depth 0.1 for every backbone, where ConvNeXt-T uses 0.4).
_base_ = "mask_rcnn_1x_coco.py"

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
