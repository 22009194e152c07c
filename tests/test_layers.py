"""The layering contract: ``dropbench.core`` (the base) → ``dropbench.pretrain`` and ``dropbench.transfer``
(independent of each other) → the entry layer (cli, suite, demo, compare, plots). Every import counts, the ones
inside functions too; ``make lint`` runs this file."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder → the package it installs as (pyproject.toml's package-dir).
SOURCES = {"dropbench": "dropbench", "pretrain": "dropbench.pretrain", "transfer": "dropbench.transfer"}
# What each group may import, besides itself.
ALLOWED = {
    "base": set(),
    "pretrain": {"base"},
    "transfer": {"base"},
    "entry": {"base", "pretrain", "transfer"},
}


def group(module: str) -> str | None:
    """The layer group of a first-party module; None for third-party ones."""
    if module == "dropbench" or module.startswith("dropbench.core"):
        return "base"  # the package's __init__: its version, and wandb deferred
    for name in ("pretrain", "transfer"):
        if module == f"dropbench.{name}" or module.startswith(f"dropbench.{name}."):
            return name
    return "entry" if module.startswith("dropbench.") else None


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if package == "dropbench" and path.relative_to(ROOT / folder).parts[0] in ("pretrain", "transfer"):
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(sources: dict[str, Path]) -> list[str]:
    found = []
    for module, path in sources.items():
        own = group(module)
        for line, target in imported(path):
            other = group(target)
            if other is None or other == own or other in ALLOWED[own]:
                continue
            found.append(f"{path.name}:{line}: {module} ({own}) imports {target} ({other})")
    return found


def test_every_module_is_in_a_layer():
    found = modules()
    assert {"dropbench.core.identity", "dropbench.pretrain.train", "dropbench.transfer.backbone"} <= found.keys()
    assert all(group(name) for name in found)


def test_imports_point_down_only():
    assert violations(modules()) == []


@pytest.mark.parametrize(
    ("module", "statement"),
    [
        ("dropbench.core.identity", "from dropbench.pretrain.config import Recipe"),
        ("dropbench.pretrain.train", "from dropbench.transfer.backbone import TimmBackbone"),
        ("dropbench.transfer.backbone", "import dropbench.suite"),
    ],
)
def test_an_upward_or_sideways_import_is_caught(tmp_path, module, statement):
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n    {statement}\n")
    assert len(violations({module: path})) == 1
