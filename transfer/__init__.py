"""Stage 2: transfer exported backbones to detection, segmentation and classification."""

# Here, not in ``classification``, so that the command line lists them without importing torch.
# full fine-tuning; on frozen features: a linear probe, k-NN and few-shot probes
CLS_PROTOCOLS = ("finetune", "linear", "knn", "fewshot")
