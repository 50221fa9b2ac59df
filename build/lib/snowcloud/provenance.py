"""Provenance: what identifies a file or a set of settings, for the records outputs keep of their inputs.

One algorithm (SHA-256) for every digest: of a file's content, and of JSON-serialisable settings in canonical
form (sorted keys, no whitespace), so a digest seen in a shard, a stats file, a checkpoint's tags or a training
state can be recomputed with `sha256sum` or these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_stat(path: str | Path) -> dict[str, Any]:
    """Path, size and modification time: a cheap identity that changes when the file is rewritten."""
    status = os.stat(path)
    return {"path": str(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def file_identity(path: str | Path) -> dict[str, Any]:
    """Path, size, modification time and SHA-256 of a file."""
    return {**file_stat(path), "sha256": file_sha256(path)}


def canonical_json(value: Any) -> str:
    """JSON text with sorted keys and no whitespace (tuples as lists)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def settings_digest(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of JSON-serialisable settings."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
