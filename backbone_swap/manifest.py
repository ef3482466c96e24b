"""Provenance written beside every output: inputs and their hashes, versions, timings."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

import backbone_swap


def versions() -> dict[str, str]:
    found = {"backbone-swap": backbone_swap.__version__, "python": sys.version.split()[0]}
    for package in ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["platform"] = platform.platform()
    return found


def step_record(step: str, **fields: Any) -> dict[str, Any]:
    return {"step": step, "versions": versions(), **fields}
