# Your own data (an ADE20K-layout folder): the runner writes custom_data into every dataloader, the evaluator and the
# heads' class count at run time; root and classes are required (--cfg-options custom_data.root=...).
custom_data = dict(
    root=None,
    classes=None,
    name=None,
    train_img="images/training",
    train_ann="annotations/training",
    val_img="images/validation",
    val_ann="annotations/validation",
    img_suffix=".jpg",
    seg_map_suffix=".png",
    reduce_zero_label=True,
)
