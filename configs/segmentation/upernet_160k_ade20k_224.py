# UperNet 160k on ADE20K on 224x224 crops with sliding-window inference: the protocol for backbones whose token grid
# is part of their weights (MLP-Mixer's token-mixing MLP is sized to its 224 px pretraining input).
# Follows upernet_160k_ade20k.py (the ConvNeXt repository's UperNet 160k recipe) in everything but the crop: the same
# 2048x512 scale x0.5..2.0, then 224x224 crops, and inference by 224x224 windows with stride 149 (two thirds, as the
# 512/341 of mmseg's slide configs) over the 2048x512-resized image, so every pretrained weight is used at the size it
# was trained at. Padding to one large square or resampling the token-mixing weights to a new grid would measure the
# resampling more than the backbone. The smaller crop sees less context per step than the 512 px configs: compare
# Mixer rows with each other (regime against regime), not with other families' 512 px rows.
_base_ = "upernet_160k_ade20k.py"

crop_size = (224, 224)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(149, 149)),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
