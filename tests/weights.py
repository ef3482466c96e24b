"""Reading a checkpoint's tensors back, for the tests that check what a transplant wrote bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``folder``, by name."""
    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is not a dict)
    return out


def tensor_sha(tensor: torch.Tensor) -> str:
    """The sha256 of a tensor's bytes: equal only when the values are bit-identical."""
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
