# COCO 2017 instances, mmdet's standard pipeline and CocoMetric (bbox + segm).
_base_ = "mmdet::_base_/datasets/coco_instance.py"
dataset_name = "coco2017"
