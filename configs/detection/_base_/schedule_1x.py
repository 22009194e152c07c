# 12 epochs of AdamW 1e-4, weight decay 0.05, linear warm-up over 500 iterations from 0.001, lr x0.1 at epochs 8 and
# 11, mixed precision: the Swin Transformer and ConvNeXt Mask R-CNN recipes (schedule_1x.py of both repositories).
# Layer-wise lr decay per backbone family, as each family's anchor groups it (transfer/optim.py):
#   convnext: the ConvNeXt repository's LearningRateDecayOptimizerConstructor, layer_wise, decay 0.95 over 6 ids
#             (mask_rcnn_convnext_tiny_*_3x_coco_in1k.py): stem x0.70, first stage x0.74, last stage x0.95;
#   swin:     the Swin repository: no layer decay;
#   vit:      mmdet's projects/ViTDet LayerDecayOptimizerConstructor, 0.7 per block, the top block decayed too
#             (ViT-T: patch embedding x0.7^13, last block x0.7);
#   mixer:    no anchor (Mask R-CNN refuses a fixed token grid); as a plain ViT;
#   default:  any other timm model: no decay, as mmdet fine-tunes a ResNet.
# Neck and heads train at the full lr. Weight decay spares biases, norms and position embeddings (the ConvNeXt
# repository's rule; the Swin repository also decays biases, ViTDet decays biases and uses 0.1).
max_epochs = 12
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type="AmpOptimWrapper",  # float32 with a log line on a machine without a GPU
    constructor="TimmLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay=dict(
            convnext=dict(rate=0.95, grouping="convnext_layer_wise", num_layers=6),
            swin=dict(rate=1.0),
            vit=dict(rate=0.7, grouping="beit"),
            mixer=dict(rate=0.7, grouping="beit"),
            default=dict(rate=1.0),
        )
    ),
)
# The lr is the one for 16 images per step (8 GPUs × 2); other totals scale it linearly (mmengine's scale_lr).
auto_scale_lr = dict(enable=True, base_batch_size=16)
# Non-deterministic kernels and cuDNN's autotuner, as the anchors run (randomness.deterministic=True switches them).
randomness = dict(deterministic=False)
