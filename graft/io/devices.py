"""Resolve a user's --device (auto, cpu, cuda, cuda:N) once, for the merge and the evaluation engine alike."""

from __future__ import annotations

import torch

from graft.errors import UsageError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
    return torch.device(device)
