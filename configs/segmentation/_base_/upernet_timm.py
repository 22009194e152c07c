# UperNet + FCN auxiliary head on any dropbench export. `dropbench transfer seg` sets backbone.export and the
# heads' in_channels (the adapter's channels at strides 4, 8, 16, 32).
# As the anchors build it: every backbone output goes through a LayerNorm over channels before the fresh heads (the
# ConvNeXt and Swin segmentation backbones' norm{i}); plain ViTs feed the four maps from blocks 2, 5, 8 and 11 of 12
# (mmseg's configs/vit out_indices), up-sampled as mmseg's Feature2Pyramid / ViTDet's pyramid. Stochastic depth 0.1
# while fine-tuning (mmseg's MAE and ViT configs; Swin-T uses 0.3 and ConvNeXt-T 0.4 at their larger widths).
_base_ = "mmseg::_base_/models/upernet_r50.py"
custom_imports = dict(imports=["dropbench.transfer.segmentation"], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type="TimmBackbone",
        export=None,
        out_strides=(4, 8, 16, 32),
        drop_path_rate=0.1,
        out_norm=True,
        plain_blocks="spaced",
    ),
    decode_head=dict(in_channels=None, num_classes=150),
    auxiliary_head=dict(in_channels=None, num_classes=150),
)
