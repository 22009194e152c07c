_base_ = "mmseg::_base_/default_runtime.py"
default_hooks = dict(
    # every 16k iterations (35-50 min on 8 GPUs; docs/paper-scale.md, "What a paper-scale run costs"), the last two
    # kept: a run resumes from the newer, which is whole even if a kill interrupts the next save
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000, max_keep_ckpts=2),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
)
