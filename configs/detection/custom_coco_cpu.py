# Your own COCO-format instances (a json per split, as annotation tools write it) through the embedded CPU recipe
# of mask_rcnn_cpu.py. Give the folder and the class names (in the json's category order):
#   dropbench transfer det --backbone runs/x/export --config configs/detection/custom_coco_cpu.py \
#       --work-dir work/mine --cfg-options custom_data.root=/data/mine "custom_data.classes=[cat,dog]"
# The runner writes them into every dataloader, the evaluator and the heads' class count (custom_data is read at
# run time: mmengine would resolve a plain data_root variable when the file is parsed, before --cfg-options).
# Where your layout differs from COCO's, set custom_data.train_ann / val_ann (json files) and custom_data.train_img /
# val_img (image folders), all relative to root; custom_data.name names the data in the records (default: the
# folder's name).
_base_ = ["mask_rcnn_cpu.py", "_base_/custom_coco.py"]

embedded_data = None
