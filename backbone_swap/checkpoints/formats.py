"""The VLM formats backbone-swap reads: one entry each, looked up once from a checkpoint's config.

An entry says how a checkpoint of its format is laid out (where its tower, projector and language model sit, which
settings belong to its vision side), which transformers classes load it, what format a transplant of it writes,
and which commands take it. Code asks the entry instead of branching on format names, so a new format is one entry.

- ``llava``: ``LlavaForConditionalGeneration`` folders, both key layouts (llava-hf's and transformers 5's).
- ``llava_next``: ``LlavaNextForConditionalGeneration``: its image tiling (``image_grid_pinpoints``) is part of the
  vision side, and its ``image_newline`` vector lives in the LLM's embedding space, after the projector.
- ``llava_original``: checkpoints of the original LLaVA training code (``mm_*`` config keys, no tower inside),
  converted on the way in as transformers' conversion script does; a transplant of one writes ``llava``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backbone_swap.checkpoints import original
from backbone_swap.checkpoints.folder import Checkpoint
from backbone_swap.checkpoints.parts import Projector, VisionTower, dtype_of, numel, read_vision
from backbone_swap.errors import BackboneSwapError

COMMANDS = ("inspect", "transplant", "train", "eval", "upgrade")

VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")
# LLaVA-NeXT's image_newline is a vector in the LLM's embedding space, appended after the projector: it belongs with
# the projector, not with the vision tower
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.", original.PROJECTOR_PREFIX,
                      "model.image_newline", "image_newline")


def component_of(name: str, kind: str) -> str:
    """Which part a tensor name belongs to: vision_tower, projector or language_model (every format's names)."""
    if kind == "vlm":
        if name.startswith(VISION_PREFIXES):
            return "vision_tower"
        if name.startswith(PROJECTOR_PREFIXES):
            return "projector"
    return "language_model"


@dataclass(frozen=True)
class Refusal:
    """Why a command does not take a format (completing "PATH is LABEL, ..."), and what to do instead."""

    why: str
    hint: str


@dataclass(frozen=True)
class VlmFormat:
    """A transformers LLaVA-family format: the tower, projector and language model are all in the folder."""

    name: str
    label: str  # "PATH is {label}" in refusals
    model_class: str  # the transformers classes that load and build it
    config_class: str
    processor_class: str
    refusals: dict[str, Refusal] = field(default_factory=dict)  # commands that do not take it (COMMANDS)
    image_newline: bool = False  # a learned vector after the projector (LLaVA-NeXT)
    writes: str = ""  # the format a transplant of it writes (default: its own)
    separate_tower: bool = False  # the tower is not in the folder: given with --vision-tower

    def require(self, command: str, path: Any) -> None:
        """Refuse ``command`` on a checkpoint of this format, in one sentence with what to do instead."""
        refusal = self.refusals.get(command)
        if refusal is not None:
            raise BackboneSwapError(f"{path} is {self.label}, {refusal.why}", refusal.hint)

    @property
    def output(self) -> VlmFormat:
        return FORMATS[self.writes or self.name]

    # -- reading -------------------------------------------------------------------------------------
    def text(self, config: dict[str, Any], path: Any) -> tuple[dict[str, Any], str]:
        """The language model's config and family."""
        text = dict(config.get("text_config") or {})
        return text, text.get("model_type", "llama")

    def check_parts(self, ckpt: Checkpoint, by_part: dict[str, list[str]]) -> None:
        """Refuse a folder whose tensors this format cannot hold."""

    def vision(self, ckpt: Checkpoint, tower: Checkpoint | None, names: list[str]) -> VisionTower | None:
        config = ckpt.config
        return read_vision(ckpt.path, dict(config.get("vision_config") or {}), ckpt.weights, names,
                           feature_layer=config.get("vision_feature_layer", -2),
                           select_strategy=config.get("vision_feature_select_strategy", "default"))

    def projector(self, ckpt: Checkpoint, names: list[str]) -> Projector:
        first = _find(names, PROJECTOR_PREFIXES, "linear_1.weight")
        second = _find(names, PROJECTOR_PREFIXES, "linear_2.weight")
        if first is None or second is None:
            raise BackboneSwapError(
                f"{ckpt.path} has no multi_modal_projector.linear_1/linear_2 weights",
                "Pass a LLaVA checkpoint with its projector (an mlp2x_gelu projector)",
            )
        out_features, in_features = ckpt.weights.shape(first)
        return Projector(
            in_features=in_features,
            out_features=out_features,
            activation=ckpt.config.get("projector_hidden_act", "gelu"),
            bias=ckpt.config.get("multimodal_projector_bias", True),
            tensors={n: list(ckpt.weights.shape(n)) for n in names},
        )

    def settings(self, config: dict[str, Any]) -> dict[str, Any]:
        """Settings of the vision side beyond the tower's config, which a transplant keeps."""
        return {}

    def image_token(self, ckpt: Checkpoint) -> tuple[str, int | None]:
        config = ckpt.config
        token = ckpt.processor_config.get("image_token") or "<image>"
        return token, config.get("image_token_index", config.get("image_token_id"))

    def tower_parts(self, tower: Checkpoint | None) -> tuple[int, str] | None:
        """Parameters and dtype of a tower stored outside the folder (None: it is inside)."""
        return None

    def notes(self, ckpt: Checkpoint, tower: Checkpoint | None) -> list[str]:
        return []

    # -- transplanting -------------------------------------------------------------------------------
    def projector_target(self, name: str) -> str:
        """Where a projector tensor of this format goes in the transplanted model (``--projector reuse``)."""
        if name.endswith("image_newline"):
            return "model.image_newline"  # in the LLM's embedding space, like the projector's output
        return f"model.multi_modal_projector.{name.split('multi_modal_projector.', 1)[1]}"

    def output_config(self, common: dict[str, Any], old_config: dict[str, Any], vision: VisionTower):
        """The config of a transplant written in this format, from the settings every format shares."""
        import transformers

        config = getattr(transformers, self.config_class)(**common, **self._own_config(old_config, vision))
        config.architectures = [self.model_class]
        return config

    def _own_config(self, old_config: dict[str, Any], vision: VisionTower) -> dict[str, Any]:
        return {"image_seq_length": vision.image_tokens}

    def changes(self, anatomy: Any, *, projector: str, seed: int) -> dict[str, Any]:
        """What a transplant kept or converted of this format, in the manifest's words."""
        return {}


class NextFormat(VlmFormat):
    """LLaVA-NeXT: large images are tiled (``image_grid_pinpoints``), which is part of the vision side and kept; its
    ``image_newline`` is a learned vector in the LLM's embedding space, new with the projector."""

    def settings(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"image_grid_pinpoints": config.get("image_grid_pinpoints")}

    def _own_config(self, old_config: dict[str, Any], vision: VisionTower) -> dict[str, Any]:
        return {"image_grid_pinpoints": old_config.get("image_grid_pinpoints"),
                "image_seq_length": old_config.get("image_seq_length", vision.image_tokens)}

    def changes(self, anatomy: Any, *, projector: str, seed: int) -> dict[str, Any]:
        return {"llava_next": {
            "image_grid_pinpoints": anatomy.settings.get("image_grid_pinpoints"),
            "image_newline": "copied from the VLM" if projector == "reuse"
            else f"new with the projector (normal, std 1/sqrt(hidden size), seed {seed})",
        }}


class OriginalFormat(VlmFormat):
    """A checkpoint of the original LLaVA training code: a causal LM whose config carries ``mm_*`` keys and whose
    weights add ``model.mm_projector``; its vision tower is only named (``mm_vision_tower``) and given separately."""

    def text(self, config: dict[str, Any], path: Any) -> tuple[dict[str, Any], str]:
        original.check_supported(config, path)
        return config, original.family_of(config, path)

    def check_parts(self, ckpt: Checkpoint, by_part: dict[str, list[str]]) -> None:
        if by_part.get("vision_tower"):
            raise BackboneSwapError(
                f"{ckpt.path} holds vision tower weights of its own (a tower tuned with the LLM), which backbone-swap "
                "cannot read from an original LLaVA checkpoint yet",
                "Convert it to a transformers LLaVA folder first (transformers' convert_llava_weights_to_hf.py)",
            )

    def vision(self, ckpt: Checkpoint, tower: Checkpoint | None, names: list[str]) -> VisionTower | None:
        """The separately stored tower, checked against what the checkpoint was trained with."""
        config = ckpt.config
        strategy = original.select_strategy(config, ckpt.path)
        if tower is None:
            return None
        vcfg = original.tower_config(tower)
        tower_names = [name for name, _ in original.tower_tensors(tower)]
        vision = read_vision(tower.path, vcfg, tower.weights, tower_names, feature_layer=original.feature_layer(config),
                             select_strategy=strategy)
        trained_with = config.get("mm_hidden_size")
        if trained_with is not None and trained_with != vision.hidden_size:
            raise BackboneSwapError(
                f"the vision tower {tower.path} has hidden size {vision.hidden_size}, but {ckpt.path} was trained "
                f"with mm_hidden_size {trained_with} ({config.get('mm_vision_tower', 'its mm_vision_tower')})",
                "Pass the local folder of the vision tower named in mm_vision_tower",
            )
        return vision

    def projector(self, ckpt: Checkpoint, names: list[str]) -> Projector:
        """``model.mm_projector``: its first Linear takes the vision features, its last gives the LLM's width."""
        kind = original.projector_type(ckpt.config)
        matrices = sorted((n for n in names if n.endswith(".weight") and len(ckpt.weights.shape(n)) == 2),
                          key=original.projector_layer_index)
        if not matrices:
            raise BackboneSwapError(
                f"{ckpt.path} has no model.mm_projector weights",
                "Pass the checkpoint of the finished LLaVA run (the projector is saved with the model)",
            )
        return Projector(
            in_features=ckpt.weights.shape(matrices[0])[1],
            out_features=ckpt.weights.shape(matrices[-1])[0],
            activation="gelu",
            bias=any(n.endswith(".bias") for n in names),
            tensors={n: list(ckpt.weights.shape(n)) for n in names},
            type=kind,
        )

    def settings(self, config: dict[str, Any]) -> dict[str, Any]:
        return original.settings(config)

    def image_token(self, ckpt: Checkpoint) -> tuple[str, int | None]:
        return "<image>", None  # the original code splices features in at a sentinel id, not a vocabulary token

    def tower_parts(self, tower: Checkpoint | None) -> tuple[int, str] | None:
        if tower is None:
            return None
        names = [name for name, _ in original.tower_tensors(tower)]
        return sum(numel(tower.weights.shape(n)) for n in names), dtype_of(tower.weights, names)

    def notes(self, ckpt: Checkpoint, tower: Checkpoint | None) -> list[str]:
        config, notes = ckpt.config, []
        if tower is None:
            notes.append(f"the vision tower ({config.get('mm_vision_tower', 'mm_vision_tower')}) is not stored in "
                         "this folder: pass its local folder with --vision-tower")
        if config.get("mm_use_im_start_end"):
            notes.append("trained with image start/end tokens (mm_use_im_start_end); the transplant does not add them")
        return notes

    def projector_target(self, name: str) -> str:
        return f"model.multi_modal_projector.{original.projector_target(name)}"

    def changes(self, anatomy: Any, *, projector: str, seed: int) -> dict[str, Any]:
        vision = anatomy.vision
        return {"converted_from_original_llava": {
            "settings": anatomy.settings,
            "vision_feature_layer": vision.feature_layer,
            "vision_feature_select_strategy": vision.select_strategy,
            "projector": "model.mm_projector.0/.2 -> multi_modal_projector.linear_1/.linear_2"
            if projector == "reuse" else "not used (a new projector was made)",
        }}


_NEXT_TRAINING = "and training LLaVA-NeXT is not supported yet"
_CONVERT = "Convert it to a transformers LLaVA folder first (transformers' convert_llava_weights_to_hf.py)"

FORMATS: dict[str, VlmFormat] = {
    "llava": VlmFormat("llava", "a LLaVA model", "LlavaForConditionalGeneration", "LlavaConfig", "LlavaProcessor"),
    "llava_next": NextFormat(
        "llava_next", "a LLaVA-NeXT model", "LlavaNextForConditionalGeneration", "LlavaNextConfig",
        "LlavaNextProcessor", image_newline=True,
        refusals={
            # training feeds one fixed-size image per sample through the cached features; LLaVA-NeXT's tiling gives
            # each image its own number of tokens, which that path does not handle yet
            "train": Refusal(_NEXT_TRAINING, "Transplant a LLaVA (1.5) model to train; a LLaVA-NeXT transplant can "
                                             "be evaluated with eval and compare"),
            "upgrade": Refusal(_NEXT_TRAINING, "Run transplant, then eval and compare, step by step; or upgrade a "
                                               "LLaVA (1.5) model"),
        },
    ),
    "llava_original": OriginalFormat(
        "llava_original", "a checkpoint of the original LLaVA training code", "LlavaForConditionalGeneration",
        "LlavaConfig", "LlavaProcessor", writes="llava", separate_tower=True,
        refusals={
            "train": Refusal("which train cannot load", "Transplant it first: backbone-swap transplant --vlm OLD "
                                                        "--vision-tower TOWER --llm NEW -o DIR"),
            "eval": Refusal("which eval cannot load", _CONVERT),
            "upgrade": Refusal("which upgrade cannot evaluate as the old side",
                               "Pass --baseline retrain --old-llm LLM --vision-tower TOWER (the old side is then "
                               "rebuilt from its LLM with the same recipe), or convert it to a transformers LLaVA "
                               "folder first (transformers' convert_llava_weights_to_hf.py)"),
        },
    ),
}

# model_type -> format, for the transformers formats (the original code's model types are its own)
_BY_MODEL_TYPE = {"llava": FORMATS["llava"], "llava_next": FORMATS["llava_next"]}


def is_vlm_config(config: dict[str, Any]) -> bool:
    """Whether a config describes a multimodal model (of a format backbone-swap reads or not)."""
    return original.is_original(config) or "vision_config" in config or config.get("model_type") in _BY_MODEL_TYPE


def format_of(config: dict[str, Any], path: Any) -> VlmFormat:
    """The format of a VLM config (``is_vlm_config``), refusing one backbone-swap cannot read."""
    if original.is_original(config):
        original.family_of(config, path)  # refuses a model type it does not know
        return FORMATS["llava_original"]
    model_type = config.get("model_type", "")
    if model_type not in _BY_MODEL_TYPE:
        raise BackboneSwapError(
            f"{path} is a {model_type or 'multimodal'} model, which backbone-swap cannot read yet",
            f"Supported VLM formats: {', '.join(f.model_class for f in _BY_MODEL_TYPE.values())}",
        )
    return _BY_MODEL_TYPE[model_type]


def _find(names: list[str], prefixes: tuple[str, ...], suffix: str) -> str | None:
    for prefix in prefixes:
        if prefix + suffix in names:
            return prefix + suffix
    return None
