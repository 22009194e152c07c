# Mask R-CNN (FPN) on any dropbench export. `dropbench transfer det` sets backbone.export and neck.in_channels
# (the adapter's channels); the FPN receives strides 4, 8, 16 and 32 whatever the backbone family.
# As the anchors build it: every backbone output goes through a LayerNorm over channels before the fresh FPN (the
# ConvNeXt and Swin detection backbones' norm{i}); plain ViTs make all four maps from their last block (ViTDet's
# simple feature pyramid: 2x transposed convolutions with LayerNorm and GELU, max-pooling). Stochastic depth 0.1
# while fine-tuning (ViTDet's ViT-B; Swin-T uses 0.2 and ConvNeXt-T 0.4 at their larger widths).
_base_ = "mmdet::_base_/models/mask-rcnn_r50_fpn.py"
custom_imports = dict(imports=["dropbench.transfer.detection"], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="TimmBackbone",
        export=None,
        out_strides=(4, 8, 16, 32),
        drop_path_rate=0.1,
        out_norm=True,
        plain_blocks="last",
    ),
    neck=dict(in_channels=None),
)
