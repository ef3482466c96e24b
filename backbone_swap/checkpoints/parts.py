"""The vision side of a VLM as read from its config and weight shapes: the tower and the projector.

Numbers that matter are read from the weight shapes and checked against the config, because a config that
disagrees with its weights is the kind of input that otherwise fails deep inside a training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError

# Vision towers whose tensors LLaVA models can hold, with their extra (CLS) positions.
VISION_TOWERS: dict[str, int] = {"clip_vision_model": 1, "siglip_vision_model": 0}

_VISION_DEFAULTS = {
    "clip_vision_model": {"hidden_size": 768, "image_size": 224, "patch_size": 32, "num_hidden_layers": 12},
    "siglip_vision_model": {"hidden_size": 768, "image_size": 224, "patch_size": 16, "num_hidden_layers": 12},
}


@dataclass
class VisionTower:
    model_type: str
    hidden_size: int
    image_size: int
    patch_size: int
    num_layers: int
    feature_layer: int | list[int]
    select_strategy: str

    @property
    def feature_dim(self) -> int:
        """Width of the features the projector receives (layers are concatenated when several)."""
        layers = 1 if isinstance(self.feature_layer, int) else len(self.feature_layer)
        return self.hidden_size * layers

    @property
    def image_tokens(self) -> int:
        patches = (self.image_size // self.patch_size) ** 2
        extra = VISION_TOWERS.get(self.model_type, 0)
        return patches + extra - (1 if self.select_strategy == "default" and extra else 0)


@dataclass
class Projector:
    in_features: int
    out_features: int
    activation: str
    bias: bool
    tensors: dict[str, list[int]]
    type: str = "mlp2x_gelu"  # the only type LLaVA in transformers holds; others can only be replaced


def read_vision(path: Path | str, vcfg: dict[str, Any], weights: Any, names: Sequence[str], *,
                feature_layer: int | list[int], select_strategy: str) -> VisionTower:
    """The vision tower described by ``vcfg``, checked against the shapes of its tensors ``names``."""
    model_type = vcfg.get("model_type", "clip_vision_model")
    if model_type not in VISION_TOWERS:
        raise BackboneSwapError(
            f"{path} has a {model_type} vision tower, which backbone-swap does not support",
            f"Supported vision towers: {', '.join(VISION_TOWERS)}",
        )
    values = {**_VISION_DEFAULTS[model_type], **vcfg}
    hidden, image, patch = values["hidden_size"], values["image_size"], values["patch_size"]
    patch_name = next((n for n in names if n.endswith("embeddings.patch_embedding.weight")), None)
    if patch_name is not None:
        w_hidden, _, w_patch, _ = weights.shape(patch_name)
        if (w_hidden, w_patch) != (hidden, patch):
            raise BackboneSwapError(
                f"{path}: the vision tower's weights have hidden size {w_hidden} and patch {w_patch}, "
                f"but config.json says {hidden} and {patch}",
                "The config does not belong to these weights; restore the original config.json",
            )
    pos_name = next((n for n in names if n.endswith("embeddings.position_embedding.weight")), None)
    if pos_name is not None:
        positions = weights.shape(pos_name)[0]
        expected = (image // patch) ** 2 + VISION_TOWERS[model_type]
        if positions != expected:
            raise BackboneSwapError(
                f"{path}: the vision tower has {positions} position embeddings, but image size {image} "
                f"and patch {patch} in config.json need {expected}",
                "The config does not belong to these weights; restore the original config.json",
            )
    return VisionTower(
        model_type=model_type,
        hidden_size=hidden,
        image_size=image,
        patch_size=patch,
        num_layers=values["num_hidden_layers"],
        feature_layer=feature_layer,
        select_strategy=select_strategy,
    )


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def dtype_of(weights: Any, names: Sequence[str]) -> str:
    """The dtype most of ``names`` are stored in."""
    counts: dict[str, int] = {}
    for n in names:
        counts[weights.dtype(n)] = counts.get(weights.dtype(n), 0) + 1
    return max(counts, key=counts.__getitem__) if counts else "none"
