_base_ = "mmdet::_base_/default_runtime.py"
# every epoch (10-30 min of a 1x run on 8 GPUs; docs/paper-scale.md, "What a paper-scale run costs"), the last two
# kept: 36 epochs of a ViT-B with its AdamW state would be tens of GB, and a run resumes from the newer, whole even if
# a kill interrupts the next save
default_hooks = dict(checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=2))
