# Your own data (COCO-format instances): the runner writes custom_data into every dataloader, the evaluator and the
# heads' class count at run time; root and classes are required (--cfg-options custom_data.root=...).
custom_data = dict(
    root=None,
    classes=None,
    name=None,
    train_ann="annotations/instances_train2017.json",
    val_ann="annotations/instances_val2017.json",
    train_img="train2017/",
    val_img="val2017/",
)
