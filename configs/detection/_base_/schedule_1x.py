# 12 epochs, AdamW 1e-4 with layer-wise lr decay over the timm backbone, AMP (GPU).
max_epochs = 12
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type="AmpOptimWrapper",
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
# The lr is the one for 16 images per step (8 GPUs × 2); other totals scale it linearly (mmengine's scale_lr).
auto_scale_lr = dict(enable=True, base_batch_size=16)
