"""Stage 2: transfer exported backbones to detection, segmentation and classification."""
