"""A checkpoint folder as backbone-swap sees it: its config, tokenizer files and weight index.

Opening a checkpoint reads JSON and safetensors headers only, so it is instant even for a 70B model and
imports neither torch nor transformers. Every refusal a user can meet on the way in (missing folder,
pickle weights, remote code, corrupt files) is raised here, before any output exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints import streaming as st
from backbone_swap.errors import BackboneSwapError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# what a model id on the Hugging Face Hub looks like (``llava-hf/llava-1.5-7b-hf``): a user who passes one expects a
# download, which backbone-swap never does
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Weights:
    """The tensors of a checkpoint by name, readable one at a time."""

    format: str  # "safetensors" or "pickle"
    files: list[Path]
    entries: dict[str, st.TensorEntry] = field(default_factory=dict)
    _pickled: dict[str, Any] = field(default_factory=dict, repr=False)

    def names(self) -> list[str]:
        return list(self.entries) if self.format == "safetensors" else list(self._pickled)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.format == "safetensors":
            return self.entries[name].shape
        return tuple(self._pickled[name].shape)

    def dtype(self, name: str) -> str:
        if self.format == "safetensors":
            return self.entries[name].dtype
        return st.safetensors_dtype(self._pickled[name].dtype)

    def nbytes(self, name: str) -> int:
        n = st.DTYPE_SIZES[self.dtype(name)]
        for d in self.shape(name):
            n *= d
        return n

    def read_tensor(self, name: str):
        if self.format == "safetensors":
            return st.read_tensor(self.entries[name])
        return self._pickled[name]

    def read_rows(self, name: str, start: int, stop: int):
        """Rows [start, stop) of a matrix, read from the file alone: a vocabulary of 128K rows is read a chunk at a
        time, never whole."""
        if self.format != "safetensors":
            return self._pickled[name][start:stop]
        import torch

        entry = self.entries[name]
        row = entry.nbytes // entry.shape[0]
        buffer = bytearray(st.read_bytes(entry, start * row, stop * row))
        dtype = getattr(torch, st.TORCH_DTYPES[entry.dtype])
        return torch.frombuffer(buffer, dtype=dtype).reshape(stop - start, *entry.shape[1:])

    def copy(self, name: str, new_name: str) -> st.PlannedTensor:
        """Plan an unchanged copy of tensor ``name`` into the output under ``new_name``."""
        if self.format == "safetensors":
            return st.copy_of(self.entries[name], new_name)
        tensor = self._pickled[name]
        return st.PlannedTensor(new_name, self.dtype(name), self.shape(name), lambda: st.tensor_to_bytes(tensor))

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass
class Checkpoint:
    """A local model folder: parsed JSON files and the weight index, no weights loaded."""

    path: Path
    config: dict[str, Any]
    weights: Weights
    tokenizer_config: dict[str, Any]
    tokenizer_json: dict[str, Any] | None
    processor_config: dict[str, Any]
    chat_template: str | None

    def sha256(self, on_bytes: Callable[[int], None] | None = None) -> dict[str, str]:
        """sha256 of every weight file, so a manifest can prove which inputs were used."""
        return {file.name: st.sha256_file(file, on_bytes) for file in self.weights.files}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackboneSwapError(
            f"{path} is not readable JSON ({e.__class__.__name__})", "Fix or replace the file"
        ) from None
    if not isinstance(data, dict):
        raise BackboneSwapError(f"{path} does not hold a JSON object", "Fix or replace the file")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


def open_checkpoint(path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Checkpoint:
    """Open a local checkpoint folder for reading, refusing what backbone-swap must not load silently."""
    typed, path = str(path), Path(path).expanduser()
    if not path.exists():
        if _HUB_ID.fullmatch(typed):
            raise BackboneSwapError(
                f"{typed} is no local folder: backbone-swap reads only local folders, and downloads nothing",
                f"Download it first (e.g. huggingface-cli download {typed} --local-dir DIR) and pass DIR")
        raise BackboneSwapError(f"{path} does not exist", "Pass the folder of a local Hugging Face checkpoint")
    if not path.is_dir():
        raise BackboneSwapError(f"{path} is not a folder", "Pass the folder that holds config.json and the weights")
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise BackboneSwapError(
                f"{path} is a LoRA adapter (adapter_config.json), not a whole model",
                "Pass the merged model instead (train writes it beside the adapter, in final/merged), or merge the "
                "adapter into its base model first")
        raise BackboneSwapError(
            f"{path} has no config.json", "Pass the folder of a Hugging Face checkpoint (saved with save_pretrained)"
        )
    config = _read_json(path / "config.json")
    if config.get("auto_map") and not trust_remote_code:
        raise BackboneSwapError(
            f"{path} needs custom code from its folder (auto_map in config.json)",
            "Read that code, then pass --trust-remote-code if you trust it",
        )
    weights = _open_weights(path, allow_pickle=allow_pickle)
    tokenizer_config = _optional_json(path / "tokenizer_config.json")
    tokenizer_json = None
    if (path / "tokenizer.json").is_file():
        tokenizer_json = _read_json(path / "tokenizer.json")
    processor_config = _optional_json(path / "processor_config.json")
    if not processor_config and (path / "preprocessor_config.json").is_file():
        processor_config = {"image_processor": _read_json(path / "preprocessor_config.json")}
    template = None
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(tokenizer_config.get("chat_template"), str):
        template = tokenizer_config["chat_template"]
    elif (path / "chat_template.json").is_file():
        template = _read_json(path / "chat_template.json").get("chat_template")
    return Checkpoint(path, config, weights, tokenizer_config, tokenizer_json, processor_config, template)


def _open_weights(path: Path, *, allow_pickle: bool) -> Weights:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BackboneSwapError(f"{index} has no weight_map", "Re-save the checkpoint with save_pretrained")
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BackboneSwapError(
                f"{path} is missing weight shard {missing[0]} named in its index", "Copy the complete checkpoint"
            )
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if files:
        entries: dict[str, st.TensorEntry] = {}
        for file in files:
            header, _ = st.read_header(file)
            twice = sorted(set(header) & set(entries))
            if twice:
                raise BackboneSwapError(f"{path}: tensor {twice[0]} is stored in two weight files",
                                        "Remove the stray file or re-save the checkpoint")
            entries.update(header)
        return Weights("safetensors", files, entries)
    index = path / "pytorch_model.bin.index.json"
    if index.is_file():
        pickles = sorted({path / f for f in _read_json(index).get("weight_map", {}).values()})
    else:  # model weights only: training_args.bin and optimizer states are pickles too, but not weights
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()
                         and p.name.startswith(("pytorch_model", "model")))
    if not pickles:
        raise BackboneSwapError(f"{path} holds no model weights", "Pass a folder with *.safetensors weight files")
    if not allow_pickle:
        raise BackboneSwapError(
            f"{path} has only pickle weights ({pickles[0].name}), which can run code when loaded",
            "Convert them to safetensors, or pass --allow-pickle if you trust the file",
        )
    return _open_pickles(pickles)


def _open_pickles(files: list[Path]) -> Weights:
    import torch

    tensors: dict[str, Any] = {}
    for file in files:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for a bad archive
            raise BackboneSwapError(f"{file} could not be read as PyTorch weights ({e.__class__.__name__})",
                                    "Check that the file is complete") from None
        if not isinstance(state, dict):
            raise BackboneSwapError(
                f"{file} does not hold a state dict", "Pass a checkpoint saved with save_pretrained"
            )
        tensors.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return Weights("pickle", files, _pickled=tensors)


def load_processor(path: str | Path):
    """The processor (tokenizer, image processor, chat template) saved in a VLM folder, or one clear error."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise BackboneSwapError(
            f"the processor of {path} (its tokenizer and image processor) could not be loaded ({first})",
            "Use a folder written by backbone-swap transplant or train, or copy the tokenizer and "
            "preprocessor_config.json files of the model into it",
        ) from None
