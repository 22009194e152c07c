# Your own COCO-format instances through the paper-scale Mask R-CNN 1x schedule (mask_rcnn_1x_coco.py); the same
# custom_data keys as custom_coco_cpu.py:
#   dropbench transfer det --backbone runs/x/export --config configs/detection/custom_coco_1x.py \
#       --work-dir work/mine --cfg-options custom_data.root=/data/mine "custom_data.classes=[cat,dog]"
_base_ = ["mask_rcnn_1x_coco.py", "_base_/custom_coco.py"]
