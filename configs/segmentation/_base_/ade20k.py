# ADE20K (ADEChallengeData2016 under data/ade/), mmseg's 512x512 pipeline, IoUMetric; multi-scale + flip TTA.
_base_ = "mmseg::_base_/datasets/ade20k.py"
dataset_name = "ade20k"
