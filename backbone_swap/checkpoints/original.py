"""Checkpoints written by the original LLaVA training code (haotian-liu/LLaVA), read as they are.

Such a folder is a causal LM (``LlavaLlamaForCausalLM``) whose config.json carries the multimodal settings
under ``mm_*`` keys and whose weights add the projector as ``model.mm_projector.0/.2``. The vision tower is
not in it: the config only names it (``mm_vision_tower``, a CLIP model the original code fetches when it
loads), so it is passed separately as a local folder. Names and settings map onto transformers' LLaVA as
in transformers' own conversion script (``models/llava/convert_llava_weights_to_hf.py``): the projector's
``0``/``2`` layers become ``linear_1``/``linear_2``, ``mm_vision_select_layer`` the feature layer, and
``mm_vision_select_feature`` the selection strategy.
"""

from __future__ import annotations

from typing import Any

from backbone_swap.checkpoints.folder import Checkpoint
from backbone_swap.errors import BackboneSwapError

# model_type written by the original code -> the LLM family of its language model
ORIGINAL_TYPES: dict[str, str] = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}

# mm_vision_select_feature -> transformers' vision_feature_select_strategy
SELECT_FEATURE: dict[str, str] = {"patch": "default", "cls_patch": "full"}

PROJECTOR_PREFIX = "model.mm_projector."
# mlp2x_gelu is nn.Sequential(Linear, GELU, Linear): the Linear layers sit at indices 0 and 2
PROJECTOR_LAYERS: dict[str, str] = {"0": "linear_1", "2": "linear_2"}
REUSABLE_PROJECTOR = "mlp2x_gelu"

# what a --vision-tower folder may be (config model_type) -> the vision tower model_type LLaVA holds
TOWER_TYPES: dict[str, str] = {
    "clip_vision_model": "clip_vision_model",
    "clip": "clip_vision_model",
    "siglip_vision_model": "siglip_vision_model",
    "siglip": "siglip_vision_model",
}
# tensors of a full CLIP / SigLIP model that are not part of its vision tower
_NOT_VISION = ("text_model.", "text_projection", "visual_projection", "logit_scale", "logit_bias")


def is_original(config: dict[str, Any]) -> bool:
    """A config written by the original training code: multimodal ``mm_*`` keys on a text-model config."""
    has_mm = "mm_vision_tower" in config or "mm_hidden_size" in config
    return has_mm and "text_config" not in config and "vision_config" not in config


def family_of(config: dict[str, Any], path: Any) -> str:
    model_type = config.get("model_type", "")
    if model_type not in ORIGINAL_TYPES:
        raise BackboneSwapError(
            f"{path} is an original LLaVA checkpoint of model_type {model_type or 'none'}, which backbone-swap "
            "cannot read",
            f"Supported original model types: {', '.join(ORIGINAL_TYPES)}",
        )
    return ORIGINAL_TYPES[model_type]


def select_strategy(config: dict[str, Any], path: Any) -> str:
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise BackboneSwapError(
            f"{path} selects vision features with mm_vision_select_feature {feature!r}, which LLaVA in "
            "transformers cannot express",
            f"Supported values: {', '.join(SELECT_FEATURE)}",
        )
    return SELECT_FEATURE[feature]


def feature_layer(config: dict[str, Any]) -> int:
    return int(config.get("mm_vision_select_layer", -2))


def projector_type(config: dict[str, Any]) -> str:
    # the original code's default when the key is missing is a single linear layer
    return str(config.get("mm_projector_type", "linear"))


def projector_target(name: str) -> str | None:
    """``model.mm_projector.0.weight`` -> ``linear_1.weight``; None for a name outside mlp2x_gelu."""
    rest = name.removeprefix(PROJECTOR_PREFIX)
    index, _, leaf = rest.partition(".")
    return f"{PROJECTOR_LAYERS[index]}.{leaf}" if index in PROJECTOR_LAYERS and leaf else None


def projector_layer_index(name: str) -> int:
    """Position of a projector tensor's layer in the nn.Sequential (0 for a single linear projector)."""
    index = name.removeprefix(PROJECTOR_PREFIX).split(".")[0]
    return int(index) if index.isdigit() else 0


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The original multimodal settings, as recorded in inspect's output and the transplant manifest."""
    keys = ("mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
            "mm_vision_select_feature", "image_aspect_ratio", "mm_use_im_start_end", "mm_patch_merge_type")
    return {k: config[k] for k in keys if k in config}


def check_supported(config: dict[str, Any], path: Any) -> None:
    """Refuse the original variants whose image handling a LLaVA (1.5) model cannot reproduce."""
    aspect = config.get("image_aspect_ratio")
    if isinstance(aspect, str) and aspect.startswith("anyres"):
        raise BackboneSwapError(
            f"{path} is an original LLaVA-NeXT checkpoint (image_aspect_ratio {aspect!r}), which backbone-swap "
            "cannot read yet",
            "Convert it to a transformers LlavaNextForConditionalGeneration folder first "
            "(transformers' convert_llava_next_weights_to_hf.py), then pass that folder",
        )


def tower_config(tower: Checkpoint) -> dict[str, Any]:
    """The vision config of a --vision-tower folder, as LLaVA's ``vision_config`` holds it."""
    config = tower.config
    model_type = config.get("model_type", "")
    if model_type not in TOWER_TYPES:
        raise BackboneSwapError(
            f"{tower.path} is a {model_type or 'unknown'} model, not a vision tower backbone-swap can use",
            "Pass the local folder of the CLIP or SigLIP model named in mm_vision_tower",
        )
    vision = dict(config.get("vision_config") or {}) if model_type in {"clip", "siglip"} else dict(config)
    for key in ("architectures", "auto_map", "transformers_version", "_name_or_path"):
        vision.pop(key, None)
    vision["model_type"] = TOWER_TYPES[model_type]
    return vision


def tower_tensors(tower: Checkpoint) -> list[tuple[str, str]]:
    """(name in the tower folder, name inside a LLaVA vision tower) for every vision tensor of the folder."""
    found = []
    for name in tower.weights.names():
        if name.startswith(_NOT_VISION):
            continue
        found.append((name, name))
    if not found:
        raise BackboneSwapError(f"{tower.path} holds no vision tower weights",
                                "Pass the folder of the CLIP or SigLIP model named in mm_vision_tower")
    return found
