"""dropbench: dropout regimes on timm backbones, pretraining → transfer → comparison.

Layers, each importing only those below it: ``dropbench.core`` (the base) → ``dropbench.pretrain`` and
``dropbench.transfer`` (independent of each other) → the entry layer (``cli``, ``suite``, ``demo``,
``compare``, ``plots``). ``tests/test_layers.py`` (run by ``make lint``) fails on an import that points up.
"""

__version__ = "0.1.0"
