"""What a finished training leaves: the adapter (LoRA + projector, loadable onto the input checkpoint), the
merged checkpoint with the input's own vision tower, and the loss curve."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.runs import staged_dir, write_bytes, write_json, write_safetensors
from backbone_swap.training.model import PROJECTOR


def write_loss_curve(history: list[dict[str, Any]], folder: Path) -> None:
    """loss.csv and loss.png: the curve a practitioner checks first."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["stage", "step", "loss", "lr"])
    writer.writeheader()
    writer.writerows(history)
    write_bytes(folder / "loss.csv", table.getvalue().encode("utf-8"))
    from backbone_swap.verdict.plots import plot_loss

    write_bytes(folder / "loss.png", plot_loss(history))


def _restore_tower(vlm, source: Path) -> None:
    """Put the input checkpoint's own vision tower tensors back before the merged export is written.

    Training holds the tower in the recipe's precision (and the export casts to the LLM's dtype), so an fp16
    tower under a bf16 LLM would otherwise be written rounded: the tower every comparison assumes shared
    would no longer be the one transplanted."""
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.checkpoints.formats import component_of

    weights = open_checkpoint(source).weights
    stored = {name.split("vision_tower.", 1)[1]: name for name in weights.names()
              if component_of(name, "vlm") == "vision_tower"}
    for name, param in vlm.model.vision_tower.named_parameters():
        if name not in stored:
            raise BackboneSwapError(f"{source} has no vision tower weight {name}, which the trained model holds",
                                    "Train a checkpoint written by backbone-swap transplant")
        param.data = weights.read_tensor(stored[name]).to(param.device)


def export(model, processor, output: Path, *, dtype_name: str, image_aspect: str = "pad",
           tower_source: Path | None = None) -> dict[str, str]:
    """The adapter (LoRA + projector, loadable onto the input checkpoint) and the merged checkpoint, whose vision
    tower is copied from ``tower_source`` bit for bit."""
    import torch

    exported = {}
    final = output / "final"
    final.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "peft_config")
    vlm = model.get_base_model() if is_peft else model
    dtype = getattr(torch, dtype_name)
    with staged_dir(final / "adapter") as stage:
        if is_peft:
            model.save_pretrained(stage)
        if not is_peft or PROJECTOR not in (model.peft_config["default"].modules_to_save or []):
            # the projector trained in stage 1 only (or a projector-only recipe): peft would not save it
            projector = {f"model.{PROJECTOR}.{n}": p.detach().to("cpu", dtype).contiguous()
                         for n, p in vlm.model.multi_modal_projector.named_parameters()
                         if "original_module" not in n}
            write_safetensors(stage / "projector.safetensors", projector)
        processor.save_pretrained(stage)
        write_json(stage / "preprocessing.json", {"image_aspect": image_aspect})
    exported["adapter"] = str(final / "adapter")
    merged = model.merge_and_unload() if is_peft else model
    merged = merged.to(dtype)
    if tower_source is not None:
        _restore_tower(merged, tower_source)
    merged.config.use_cache = True
    with staged_dir(final / "merged") as stage:
        merged.save_pretrained(stage)
        if tower_source is not None:
            # save_pretrained names the first parameter's dtype, the tower's; loading with dtype="auto" should
            # give the LLM's, as it does for the transplant
            config = json.loads((stage / "config.json").read_text())
            for part in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
                if "dtype" in part or part is config:
                    part["dtype"] = dtype_name
            write_json(stage / "config.json", config)
        processor.save_pretrained(stage)
        # how images were shaped in training, so evaluation shows the model what it learned on
        write_json(stage / "preprocessing.json", {"image_aspect": image_aspect})
    exported["merged"] = str(final / "merged")
    return exported
