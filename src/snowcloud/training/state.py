"""The resumable training state: one file beside the model (`state_dir/state.pt`), written atomically.

It holds everything the next step depends on (weights, optimizer, scheduler, grad scaler, early stopping
with the best weights, the position inside the epoch with its partial sums, history, RNG states) and a
fingerprint of what produced it. A state whose fingerprint differs from the current run's is set aside
(renamed, with the differing settings in the log), never resumed.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snowcloud.atomic import atomic_output
from snowcloud.checkpoint import plain, tensor_bytes
from snowcloud.provenance import settings_digest

log = logging.getLogger(__name__)

STATE_FORMAT = "snowcloud-training-state/1"
# Training options that do not change the trajectory of a run: a state stays resumable when they change. (A
# data-parallel run follows one process's trajectory up to the order of floating-point sums: `gpus`.)
RESUME_NEUTRAL_OPTIONS = ("epochs", "workers", "device", "compile", "gpus")


def trajectory_options(training: Mapping[str, Any]) -> dict[str, Any]:
    """The training options that change what a run computes (all but RESUME_NEUTRAL_OPTIONS)."""
    return {key: value for key, value in training.items() if key not in RESUME_NEUTRAL_OPTIONS}


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return found
    return [] if old == new else [f"{prefix or '(all)'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write the state atomically: a kill while saving leaves the previous state intact."""
    with atomic_output(path, tensor_bytes(state)) as tmp:
        torch.save({**state, "format": STATE_FORMAT}, tmp)


def set_aside(path: Path, reason: str) -> Path:
    """Rename a state that must not be resumed, keep it for inspection, and say so in the log."""
    aside = path.with_name(f"{path.stem}.set-aside-{len(list(path.parent.glob(path.stem + '.set-aside-*'))) + 1}.pt")
    path.rename(aside)
    log.warning("training state %s is not resumed (%s); moved to %s, training starts afresh", path, reason, aside)
    return aside


def load_state(path: str | Path, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state to resume from `path`, or None (no state, or one of another run, which is set aside)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unreadable file must not block training
        set_aside(path, f"unreadable: {type(error).__name__}: {str(error)[:200]}")
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        set_aside(path, f"not a {STATE_FORMAT} file")
        return None
    if state["fingerprint"] != settings_digest(plain(dict(inputs))):
        changed = differences(state["fingerprint_inputs"], plain(dict(inputs)))
        set_aside(path, "it was made with other settings or data: " + "; ".join(changed or ["unknown change"]))
        return None
    return state


def capture_rng() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, Python) as weights_only-safe data."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": position, "gauss": [has_gauss, cached]},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next},
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], *numpy_state["gauss"])
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss"]))
