# Mask R-CNN (FPN) on any dropbench export. `dropbench transfer det` sets backbone.export and neck.in_channels
# (the adapter's channels); the FPN receives strides 4, 8, 16 and 32 whatever the backbone family.
_base_ = "mmdet::_base_/models/mask-rcnn_r50_fpn.py"
custom_imports = dict(imports=["dropbench.transfer.detection"], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="TimmBackbone",
        export=None,
        out_strides=(4, 8, 16, 32),
        drop_path_rate=0.1,
    ),
    neck=dict(in_channels=None),
)
