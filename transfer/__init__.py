"""Stage 2: transfer exported backbones to detection, segmentation and classification."""

# Here, not in ``classification``, so that the command line lists them without importing torch.
CLS_PROTOCOLS = ("finetune", "linear")  # full fine-tuning, a linear probe on frozen features
