# UperNet 160k on ADE20K (16 images per batch: 8 GPUs x 2), the paper's segmentation transfer: single-scale
# mIoU during training, multi-scale + flip mIoU at the end; sliding-window inference on 512x512 crops.
_base_ = ["_base_/upernet_timm.py", "_base_/ade20k.py", "_base_/schedule_160k.py", "_base_/default_runtime.py"]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)
train_dataloader = dict(batch_size=2)
evaluate_tta = True
