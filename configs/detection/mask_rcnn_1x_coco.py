# Mask R-CNN 1x on COCO 2017 (16 images per batch: 8 GPUs x 2), the paper's detection transfer.
_base_ = ["_base_/mask_rcnn_timm.py", "_base_/coco_instance.py", "_base_/schedule_1x.py", "_base_/default_runtime.py"]
