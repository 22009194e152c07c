# 160k iterations of AdamW 1e-4, weight decay 0.05, linear warm-up over 1500 iterations from 1e-6, then poly decay
# (power 1) to 0, mixed precision: the ConvNeXt repository's UperNet recipe (schedule_160k.py and
# upernet_convnext_tiny_512_160k_ade20k_ms.py), which mmseg's configs/mae shares.
# Layer-wise lr decay per backbone family, as each family's anchor groups it (transfer/optim.py):
#   convnext: the ConvNeXt repository's stage_wise decay 0.9 over 6 ids: stem and downsampling layers x0.48, the
#             stages' blocks x0.53, x0.59, x0.66, x0.73;
#   swin:     the Swin Transformer Semantic Segmentation repository: no layer decay, AdamW 6e-5 with weight decay
#             0.01 (upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py), i.e. lr_mult 0.6, decay_mult 0.2;
#   vit:      mmseg's configs/mae LayerDecayOptimizerConstructor, 0.65 per block, the top block decayed too;
#   mixer:    no anchor; as a plain ViT (upernet_160k_ade20k_224.py);
#   default:  any other timm model: no decay.
# Heads train at the full lr. Weight decay spares biases, norms and position embeddings (the ConvNeXt repository's
# and mmseg's MAE rule; the Swin repository also decays biases).
max_iters = 160000
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(
    type="AmpOptimWrapper",  # float32 with a log line on a machine without a GPU
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay=dict(
            convnext=dict(rate=0.9, grouping="convnext_stage_wise", num_layers=6),
            swin=dict(rate=1.0, lr_mult=0.6, decay_mult=0.2),
            vit=dict(rate=0.65, grouping="beit"),
            mixer=dict(rate=0.65, grouping="beit"),
            default=dict(rate=1.0),
        )
    ),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
# The lr is the one for 16 images per step (8 GPUs × 2); other totals scale it linearly (mmengine's scale_lr).
auto_scale_lr = dict(enable=True, base_batch_size=16)
# Non-deterministic kernels and cuDNN's autotuner, as the anchors run (randomness.deterministic=True switches them).
randomness = dict(deterministic=False)
