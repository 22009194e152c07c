# Your own semantic segmentation set in the ADE20K layout through the paper-scale UperNet 160k schedule
# (upernet_160k_ade20k.py); the same custom_data keys as custom_ade_cpu.py:
#   dropbench transfer seg --backbone runs/x/export --config configs/segmentation/custom_ade_160k.py \
#       --work-dir work/mine --cfg-options custom_data.root=/data/mine "custom_data.classes=[road,tree,sky]"
_base_ = ["upernet_160k_ade20k.py", "_base_/custom_ade.py"]
