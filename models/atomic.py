"""Atomic file writes: a temporary file in the same directory, then a rename.

A kill at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` (parents created) through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(data)`` (indent 2 unless given) written atomically to ``path``."""
    dumps_kwargs.setdefault("indent", 2)
    write_text_atomic(path, json.dumps(data, **dumps_kwargs) + "\n")


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` written atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
