# UperNet + FCN auxiliary head on any dropbench export. `dropbench transfer seg` sets backbone.export and the
# heads' in_channels (the adapter's channels at strides 4, 8, 16, 32).
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
    ),
    decode_head=dict(in_channels=None, num_classes=150),
    auxiliary_head=dict(in_channels=None, num_classes=150),
)
