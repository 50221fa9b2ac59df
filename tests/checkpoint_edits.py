"""A model.pt with metadata fields changed by hand, as the probes of damaged or edited checkpoints make them."""

from __future__ import annotations

from pathlib import Path

import torch


def edited(path: Path, **fields: object) -> Path:
    """The checkpoint at `path` with metadata fields replaced (None removes one), rewritten in place."""
    payload = torch.load(path, weights_only=True)
    for field, value in fields.items():
        if value is None:
            payload["metadata"].pop(field)
        else:
            payload["metadata"][field] = value
    torch.save(payload, path)
    return path
