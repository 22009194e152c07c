_base_ = "mmseg::_base_/default_runtime.py"
default_hooks = dict(
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
)
