# 160k iterations, AdamW 1e-4 with layer-wise lr decay 0.9 over the timm backbone, linear warm-up then poly, AMP.
max_iters = 160000
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="AmpOptimWrapper",
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.9),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
# The lr is the one for 16 images per step (8 GPUs × 2); other totals scale it linearly (mmengine's scale_lr).
auto_scale_lr = dict(enable=True, base_batch_size=16)
