"""dropbench: dropout regimes on timm backbones, pretraining → transfer → comparison.

Layers, each importing only those below it: ``dropbench.core`` (the base) → ``dropbench.pretrain`` and
``dropbench.transfer`` (independent of each other) → the entry layer (``cli``, ``suite``, ``demo``,
``compare``, ``plots``). ``tests/test_layers.py`` (run by ``make lint``) fails on an import that points up.
"""

import importlib.util
import sys

__version__ = "0.1.0"


def _defer_import(name: str) -> None:
    """Put module ``name`` in ``sys.modules`` unexecuted: its code runs at the first look-up of a name it defines or
    of a submodule (``import name`` alone looks up only ``__spec__``, which it has). Nothing where it is not
    installed or already loaded. The standard library's LazyLoader cannot do this: any attribute, ``__spec__``
    included, loads it."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    search_path = vars(module).pop("__path__", None)  # asked for by a submodule's import, which so loads it first

    def load(attribute: str) -> object:
        del module.__getattr__
        if search_path is not None:
            module.__path__ = search_path
        spec.loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = load
    sys.modules[name] = module


# timm imports wandb, where it is installed, as it loads (timm.utils.summary): 0.5-1 s at the start of every
# process, which only a run that logs to wandb (dropbench.core.tracking) uses.
_defer_import("wandb")
