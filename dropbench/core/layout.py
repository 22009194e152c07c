"""What a pretraining run folder holds, by name: its checkpoint and, once finished, its export folder. Kept apart
from ``core.export`` (which needs torch and timm) so that planning a suite does not import them."""

CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_DIR = "export"
EPOCH_EXPORTS_DIR = "exports"  # exports/epoch<N>/: the model after epoch N (recipe export_epochs)


def epoch_export_dir(epoch: int) -> str:
    return f"{EPOCH_EXPORTS_DIR}/epoch{epoch}"
