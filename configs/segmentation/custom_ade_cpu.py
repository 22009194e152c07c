# Your own semantic segmentation set in the ADE20K layout (images/{training,validation}/*.jpg and
# annotations/{training,validation}/*.png, label 0 = unlabelled, 1..N = your classes) through the embedded CPU
# recipe of upernet_cpu.py (plain cross-entropy: the digits' class weights do not apply). Give the folder and the
# class names:
#   dropbench transfer seg --backbone runs/x/export --config configs/segmentation/custom_ade_cpu.py \
#       --work-dir work/mine --cfg-options custom_data.root=/data/mine "custom_data.classes=[road,tree,sky]"
# The runner writes them into every dataloader and both heads' class count. Images of any size and aspect work.
# Other layouts: custom_data.train_img / train_ann / val_img / val_ann (folders relative to root), img_suffix,
# seg_map_suffix, reduce_zero_label=False when label 0 is a class; custom_data.name names the data in the records.
_base_ = ["upernet_cpu.py", "_base_/custom_ade.py"]

embedded_data = None
model = dict(
    decode_head=dict(loss_decode=dict(class_weight=None)),
    auxiliary_head=dict(loss_decode=dict(class_weight=None)),
)
