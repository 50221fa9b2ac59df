"""`model.pt`: the trained weights plus everything needed to use them, loadable with `weights_only=True`.

The file holds `{"state_dict": {name: tensor}, "metadata": {...}}`. The metadata carries a format tag
(`FORMAT`), the architecture and its arguments (enough to rebuild the network), and what inference must
know: bands, normalisation spec, classes, patch size, plus provenance (training options, dataset and stats
digest, package version, epochs, best epoch, validation metrics). Only weights_only-safe types are stored
(tensors, dict, list, str, int, float, bool, None), so loading never runs pickled code.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from snowcloud import normalisation
from snowcloud.atomic import atomic_output
from snowcloud.config import load_schema
from snowcloud.labels import ClassSet, ClassSetError
from snowcloud.model import build_model
from snowcloud.provenance import file_sha256
from snowcloud.scene import channel_names

FORMAT = "snowcloud-model/1"
REQUIRED_METADATA = ("architecture", "model_args")
INFERENCE_METADATA = ("bands", "normalisation", "patch_size")  # what predicting with a checkpoint needs


class CheckpointError(ValueError):
    """A file that is not a (readable, complete) snowcloud model checkpoint; the message names the file."""


def plain(value: Any, where: str = "metadata") -> Any:
    """`value` as weights_only-safe plain data: tuples become lists, numpy scalars Python numbers, paths str."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    for kind in (bool, int, float, str):  # subclasses too (torch.__version__, IntEnum) become the plain type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{where}: keys must be strings, got {sorted(map(repr, value))}")
        return {key: plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a weights_only checkpoint")


def unwrapped(model: nn.Module) -> nn.Module:
    """The original module behind `torch.compile` (whose state-dict keys carry an `_orig_mod.` prefix)."""
    return getattr(model, "_orig_mod", model)


def save_model(path: str | Path, model: nn.Module, metadata: Mapping[str, Any]) -> None:
    """Write the weights (on the CPU) and the metadata atomically to `path`."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata for {path} lacks {', '.join(missing)}")
    state_dict = {name: tensor.detach().cpu().clone() for name, tensor in unwrapped(model).state_dict().items()}
    payload = {"state_dict": state_dict, "metadata": {**plain(dict(metadata)), "format": FORMAT}}
    with atomic_output(path, tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested payload (about what torch.save writes)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, Mapping):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checked `{"state_dict", "metadata"}` of a snowcloud checkpoint, tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on foreign or corrupt files
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a snowcloud checkpoint: it cannot be read with weights_only=True "
            f"({type(error).__name__}: {reason})"
        ) from None
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "state_dict" not in payload:
        hint = " (it looks like a bare state_dict, e.g. a thesis .pth)" if _is_state_dict(payload) else ""
        raise CheckpointError(
            f"{path} is not a snowcloud checkpoint{hint}: expected a dict with 'state_dict' and 'metadata' "
            f"whose format is '{FORMAT}'"
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    return payload


def _is_state_dict(payload: object) -> bool:
    return isinstance(payload, dict) and bool(payload) and all(isinstance(v, torch.Tensor) for v in payload.values())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a checkpoint's metadata, load its weights, move it to `device`, eval mode."""
    payload = read_checkpoint(path)
    metadata = payload["metadata"]
    try:
        model = build_model(metadata["architecture"], **metadata["model_args"])
    except ValueError as error:
        raise CheckpointError(f"{path}: cannot rebuild the network: {error}") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit {metadata['architecture']} {metadata['model_args']}: {error}"
        ) from None
    check_metadata(path, metadata)
    return model.to(device).eval(), metadata


def check_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """CheckpointError naming the file and the field where the metadata of a network whose weights fit its
    `model_args` contradicts that network (bands and input channels, classes and outputs) or what the schema
    and the formats allow (patch size, normalisation spec, class set)."""
    for field, check in _FIELD_CHECKS.items():
        if field not in metadata:
            continue
        try:
            check(metadata[field], metadata)
        except (ValueError, TypeError) as problem:
            raise CheckpointError(
                f"{path}: metadata field '{field}' {problem}: the checkpoint was edited or damaged; use the model.pt "
                "that training (or import-thesis) wrote"
            ) from None


def _check_bands(bands: object, metadata: dict[str, Any]) -> None:
    channels = metadata["model_args"].get("in_channels")
    if not isinstance(bands, list) or bands not in (channel_names(False), channel_names(True)):
        raise ValueError(
            f"is {bands!r}; the normalisations read the scene raster's channels: {', '.join(channel_names(False))} "
            "and optionally ELEVATION, in that order"
        )
    if channels is not None and len(bands) != channels:
        raise ValueError(f"lists {len(bands)} band(s) but the network takes {channels} input channel(s)")


def _check_classes(classes: object, metadata: dict[str, Any]) -> None:
    outputs = metadata["model_args"].get("n_classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) and name for name in classes):
        raise ValueError(f"is {classes!r}, not a list of class names")
    if len(set(classes)) != len(classes):
        raise ValueError(f"names a class twice: {classes}")
    if outputs is not None and len(classes) != outputs:
        raise ValueError(f"lists {len(classes)} class(es) ({', '.join(classes)}) but the network has {outputs} outputs")


def _check_class_set(class_set: object, metadata: dict[str, Any]) -> None:
    if not isinstance(class_set, dict) or not isinstance(class_set.get("classes"), dict):
        raise ValueError(f"is {class_set!r}, not {{classes: {{name: [values]}}, ignored_classes: ...}}")
    try:
        names = ClassSet.from_options(class_set, "class_set").names
    except (ClassSetError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"cannot be used: {error}") from None
    if "classes" in metadata and list(names) != metadata["classes"]:
        raise ValueError(f"trains {', '.join(names)}, but the field 'classes' says {', '.join(metadata['classes'])}")


def _check_patch_size(patch_size: object, metadata: dict[str, Any]) -> None:
    smallest = load_schema()["$defs"]["dataset"]["properties"]["patch_size"]["minimum"]
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < smallest:
        raise ValueError(
            f"is {patch_size!r}; a patch size is an integer of at least {smallest} (datasets.*.patch_size)"
        )


def _check_normalisation(spec: object, metadata: dict[str, Any]) -> None:
    normalisation.check_spec(spec)


_FIELD_CHECKS = {
    "bands": _check_bands,
    "classes": _check_classes,
    "class_set": _check_class_set,
    "patch_size": _check_patch_size,
    "normalisation": _check_normalisation,
}


# ----------------------------------------------------------------------------------------------- a given model.pt


def load_runnable(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """load_model of a checkpoint that can predict: the network rebuilds and the inference metadata is there."""
    model, metadata = load_model(path, device)
    missing = [key for key in INFERENCE_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)} in its metadata: it cannot be run")
    return model, metadata


def runnable_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint that can predict (see load_runnable)."""
    return load_runnable(path)[1]


@functools.cache
def _given_model(path: str, size: int, mtime_ns: int) -> tuple[str, dict[str, Any]]:
    return file_sha256(path), runnable_metadata(path)


def given_model(path: str | Path) -> tuple[str, dict[str, Any]]:
    """SHA-256 and metadata of a model.pt an inference-only experiment names (read once per process and file
    version): the digest is the workflow's rerun trigger, so that new content reruns inference and a touch
    does not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (experiments.<name>.model)")
    status = path.stat()
    return _given_model(str(path), status.st_size, status.st_mtime_ns)


def install_model(source: str | Path, output: str | Path, sha256: str) -> None:
    """Copy a given model.pt to `output` (the experiment's results/models/{experiment}/model.pt), atomically,
    after checking that it can predict and is the content the workflow planned with."""
    found = file_sha256(source)
    if found != sha256:
        raise CheckpointError(f"{source} changed while the workflow ran (SHA-256 {found}, planned {sha256}): run again")
    runnable_metadata(source)
    with atomic_output(output) as tmp:
        shutil.copyfile(source, tmp)
