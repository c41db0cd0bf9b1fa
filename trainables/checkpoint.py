"""Checkpoints: weights as safetensors plus a JSON config; optimizer state via weights-only load.

Never pickled modules. A checkpoint directory holds ``model.safetensors`` (the ClipClassifier state
dict), ``config.json`` (model name, method, class names, trial config), and, for resuming a run
mid-way, ``loop_state.pt`` (optimizer/scheduler/method state: tensors and plain containers only,
loaded with ``torch.load(weights_only=True)``). Files are written to a temporary name and renamed,
so a kill never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_write, atomic_write_text
from .loop import LoopState

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LOOP_STATE = "loop_state.pt"


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict as safetensors (contiguous CPU copies; shared tensors de-duplicated)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    return path


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors state dict."""
    return load_file(str(path), device=str(device))


def save_checkpoint(directory: str | Path, state_dict: dict[str, torch.Tensor],
                    config: dict[str, Any], loop_state: LoopState | None = None) -> Path:
    """Write weights, config and (optionally) the loop state into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS, state_dict)
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2, sort_keys=True, default=str))
    if loop_state is not None:
        atomic_write(directory / LOOP_STATE, lambda p: torch.save(asdict(loop_state), p))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], LoopState | None]:
    """(state dict, config, loop state or None) from a checkpoint directory."""
    directory = Path(directory)
    state = load_weights(directory / WEIGHTS, device)
    config = json.loads((directory / CONFIG).read_text())
    loop = None
    if (directory / LOOP_STATE).is_file():
        loop = LoopState(**torch.load(directory / LOOP_STATE, map_location=device,
                                      weights_only=True))
    return state, config, loop
