"""The import contract of docs/architecture.md ("Layers"): entry points over stages over building blocks over
formats over the base, imports only downwards or within a layer (a stage importing another stage only where
STAGE_IMPORTS lists it), every import counted (also those inside functions), and no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "snowcloud"

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (
        "bands",
        "inventory",
        "atomic",
        "gdal",
        "counting",
        "provenance",
        "resample",
        "cog",
        "accelerator",
        "windows",
        "workflow",
        "sampling",
        "spectral",
        "model",
    ),
    "formats": ("safe", "scene", "labels", "config", "normalisation", "shards", "dataset_stats", "checkpoint", "mask"),
    "building blocks": (
        "dem",
        "cloudprob",
        "baselines",
        "loader",
        "losses",
        "augment",
        "metrics",
        "thesis_metrics",
        "training",
    ),
    "stages": (
        "demo",
        "preprocess",
        "train",
        "infer",
        "quicklook",
        "evaluate",
        "auto_labels",
        "reproduction",
        "season",
        "stac",
    ),
    "entry points": ("cli", "__main__", "predict", "thesis"),
}
STAGES = LAYERS["stages"]
# Stage -> the other stages it may import (none today: each stage asks formats and building blocks only).
STAGE_IMPORTS: dict[str, tuple[str, ...]] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def owner(name: str) -> str:
    """The top-level module of the package a dotted module name belongs to (`snowcloud.training.loop` ->
    `training`)."""
    return name.split(".")[1] if name.count(".") else ""


def imported(path: Path) -> set[str]:
    """The snowcloud modules a file imports anywhere in it (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("snowcloud.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("snowcloud"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return {name for name in found if name != "snowcloud"}


def layer_of(top: str) -> int:
    for index, members in enumerate(LAYERS.values()):
        if top in members:
            return index
    raise AssertionError(f"snowcloud.{top} has no layer: add it to docs/architecture.md and LAYERS here")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "snowcloud":
            layer_of(owner(name))


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name != "snowcloud"))
def test_imports_go_down_the_layers_and_stages_import_only_listed_stages(name):
    top = owner(name)
    for target in sorted(imported(MODULES[name])):
        other = owner(target)
        if other == top:
            continue
        assert layer_of(other) <= layer_of(top), (
            f"{name} (a {list(LAYERS)[layer_of(top)]} module) imports {target} above it"
        )
        if top in STAGES and other in STAGES:
            assert other in STAGE_IMPORTS.get(top, ()), f"stage {name} imports stage {target}: list it in STAGE_IMPORTS"


def test_the_rule_scripts_import_the_package_only():
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        for target in imported(script):
            layer_of(owner(target))  # a module of the package, with a layer


def test_no_module_imports_itself_back_through_others():
    graph = {name: {target for target in imported(path) if target in MODULES} for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
