"""Thesis checkpoints: a U-Net state dict saved by the 2023 thesis's training code -> a snowcloud model.pt.

The thesis's U-Net (THESIS.md §6) and snowcloud.model.unet.UNet are the same network with other attribute
names: `inc.double_conv.N`, `down1..4.maxpool_conv.1.double_conv.N`, `up1..4.up`, `up1..4.conv.double_conv.N`
and `outc.conv` there; `inc.N`, `downs.0..3.1.N`, `ups.0..3.up`, `ups.0..3.conv.N` and `outc` here. The
import renames every tensor one to one (nothing left over, nothing missing) and adds what the thesis kept in
Python constants: the preset's bands, elevation, normalisation, patch size and preprocessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from snowcloud import __version__, normalisation
from snowcloud.checkpoint import save_model
from snowcloud.config import load_config, scene_value_options
from snowcloud.labels import ClassSet
from snowcloud.model import build_model
from snowcloud.provenance import file_sha256
from snowcloud.scene import channel_names

# The presets ship with the package (as the schema does); the checkout's config/presets is a link to them.
PRESETS = Path(__file__).with_name("presets")
# Prefixes of checkpoints saved from a wrapped model: torch.compile (`_orig_mod.`), DataParallel (`module.`).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Thesis parameter name (after the prefixes) -> snowcloud's; levels 1..4 there are 0..3 here.
RENAMES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^inc\.double_conv\.(\d+)\.(\w+)$"), lambda m: f"inc.{m[1]}.{m[2]}"),
    (
        re.compile(r"^down([1-4])\.maxpool_conv\.1\.double_conv\.(\d+)\.(\w+)$"),
        lambda m: f"downs.{int(m[1]) - 1}.1.{m[2]}.{m[3]}",
    ),
    (re.compile(r"^up([1-4])\.up\.(\w+)$"), lambda m: f"ups.{int(m[1]) - 1}.up.{m[2]}"),
    (re.compile(r"^up([1-4])\.conv\.double_conv\.(\d+)\.(\w+)$"), lambda m: f"ups.{int(m[1]) - 1}.conv.{m[2]}.{m[3]}"),
    (re.compile(r"^outc\.conv\.(\w+)$"), lambda m: f"outc.{m[1]}"),
)


class ThesisImportError(ValueError):
    """A file or preset that cannot make a snowcloud checkpoint; the message names it."""


def snowcloud_name(thesis_name: str) -> str:
    """Our U-Net's name of a thesis U-Net parameter or buffer."""
    name = thesis_name
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    for pattern, rename in RENAMES:
        if match := pattern.match(name):
            return rename(match)
    raise ThesisImportError(f"'{thesis_name}' is not a parameter name of the thesis U-Net")


def read_thesis_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a thesis .pth (a bare state dict), loaded with weights_only=True, under our names."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on foreign or corrupt files
        raise ThesisImportError(f"{path}: cannot be read as a state dict ({type(error).__name__}: {error})") from None
    if isinstance(payload, dict) and "metadata" in payload and "state_dict" in payload:
        raise ThesisImportError(f"{path} is already a snowcloud checkpoint: use it as it is")
    if not isinstance(payload, dict) or not all(isinstance(value, torch.Tensor) for value in payload.values()):
        raise ThesisImportError(f"{path}: expected a state dict (parameter name -> tensor) saved by the thesis code")
    try:
        return {snowcloud_name(name): tensor for name, tensor in payload.items()}
    except ThesisImportError as error:
        raise ThesisImportError(f"{path}: {error}") from None


def preset_config(preset: str) -> tuple[dict, str]:
    """A preset (the name of one shipped with the package, or a YAML file) with the schema's defaults, and the
    name of its experiment. (The default configuration it merges over in the workflow changes no key the
    import reads.)"""
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESETS / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem != "smoke"))
        raise ThesisImportError(
            f"preset '{preset}': no file {path}; the presets shipped with snowcloud (in {PRESETS}) are {known}: "
            "give one of those names, or the path of a preset YAML file (ending in .yaml)"
        )
    config = load_config(path)
    names = config["run"] or list(config["experiments"])
    if len(names) != 1:
        raise ThesisImportError(f"preset {path} runs {len(names)} experiments ({', '.join(names)}); expected one")
    return config, names[0]


def import_thesis(pth: str | Path, preset: str, out: str | Path) -> None:
    """Write `out`, a model.pt holding the thesis state dict `pth` with the preset's bands, normalisation,
    patch size and preprocessing."""
    config, name = preset_config(preset)
    experiment = config["experiments"][name]
    dataset = config["datasets"][experiment["dataset"]]
    bands = channel_names(dataset["elevation"])
    class_set = ClassSet.from_options(dataset, f"datasets.{experiment['dataset']}")
    state = read_thesis_state_dict(pth)
    if "inc.0.weight" not in state or "outc.weight" not in state:
        raise ThesisImportError(f"{pth}: the first or the last convolution of the U-Net is missing")
    base, in_channels = state["inc.0.weight"].shape[:2]
    n_classes = state["outc.weight"].shape[0]
    expected = (len(bands), len(class_set.names), experiment["model"]["base_channels"])
    if (in_channels, n_classes, base) != expected:
        raise ThesisImportError(
            f"{pth} has {in_channels} input channels, {n_classes} classes and base width {base}, but preset "
            f"{preset} means {expected[0]} channels ({', '.join(bands)}), {expected[1]} classes "
            f"({', '.join(class_set.names)}), base {expected[2]}"
        )
    model_args = {"in_channels": in_channels, "n_classes": n_classes, "base_channels": base}
    model = build_model("unet", **model_args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ThesisImportError(f"{pth} does not fit the thesis U-Net: {error}") from None
    metadata = {
        "architecture": "unet",
        "model_args": model_args,
        "bands": bands,
        "normalisation": normalisation.spec(dataset["normalisation"]),
        "classes": list(class_set.names),
        "class_set": class_set.options(),
        "patch_size": dataset["patch_size"],
        "preprocess": scene_value_options({**config["preprocess"], "dem": dataset["elevation"]}),
        "experiment": name,
        "dataset": experiment["dataset"],
        "imported_from": {"file": str(pth), "sha256": file_sha256(pth), "preset": preset},
        "package_version": __version__,
    }
    save_model(out, model, metadata)
