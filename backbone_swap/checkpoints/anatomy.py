"""What is inside a VLM or LLM checkpoint, named by part, from its config and weight index alone.

The registries here are explicit dicts keyed by ``model_type`` from config.json: behaviour is decided by
the config, never by a folder name. Numbers that matter (hidden sizes, vocabulary rows, projector shape)
are read from the weight shapes and checked against the config, because a config that disagrees with
its weights is the kind of input that otherwise fails deep inside a training run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from backbone_swap.checkpoints import original
from backbone_swap.checkpoints.folder import Checkpoint
from backbone_swap.errors import BackboneSwapError


@dataclass(frozen=True)
class Family:
    """What backbone-swap must know about one LLM family to train and template it."""

    lora_targets: tuple[str, ...]
    notes: str = ""


_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_TARGETS, "Llama 3 has no pad token and ends turns with <|eot_id|>"),
    "mistral": Family(_LLAMA_TARGETS, "no pad token; [INST] template without a system role"),
    "qwen2": Family(_LLAMA_TARGETS, "ChatML template; <|im_end|> ends a turn"),
    "qwen3": Family(_LLAMA_TARGETS, "ChatML template with thinking blocks; <|im_end|> ends a turn"),
    "gemma": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role"),
    "gemma2": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role; logit soft-capping"),
    "gemma3_text": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role"),
    "phi3": Family(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), "<|end|> ends a turn"),
}

# Vision towers whose tensors LlavaForConditionalGeneration can hold, with the extra (CLS) positions.
VISION_TOWERS: dict[str, int] = {"clip_vision_model": 1, "siglip_vision_model": 0}

# VLM formats read by the transplant, by config model_type; the transplant writes the same class back.
VLM_FORMATS: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}
# checkpoints of the original LLaVA training code (``mm_*`` keys in config.json): read, written as LLaVA
ORIGINAL_FORMAT = "llava_original"

_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")
# LLaVA-NeXT's image_newline is a vector in the LLM's embedding space, appended after the projector: it
# belongs with the projector, not with the vision tower
_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.", original.PROJECTOR_PREFIX,
                       "model.image_newline", "image_newline")

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


@dataclass
class Anatomy:
    """The parts of one checkpoint; ``kind`` is ``vlm`` or ``llm``."""

    path: str
    kind: str
    model_type: str
    architecture: str
    family: str
    family_known: bool
    hidden_size: int
    vocab_size: int
    embedding_rows: int
    tie_word_embeddings: bool
    vision: VisionTower | None
    projector: Projector | None
    image_token: str | None
    image_token_id: int | None
    chat_template: bool
    pad_token: str | None
    eos_token: str | None
    dtypes: dict[str, str]
    parameters: dict[str, int]
    weight_format: str
    weight_files: int
    weight_bytes: int
    lora_targets: list[str]
    notes: list[str] = field(default_factory=list)
    # llava, llava_next or llava_original for a VLM, None for an LLM
    vlm_format: str | None = None
    # format-specific settings the transplant keeps: LLaVA-NeXT's image_grid_pinpoints, the original code's mm_*
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def component_of(name: str, kind: str) -> str:
    """Which part a tensor name belongs to: vision_tower, projector or language_model."""
    if kind == "vlm":
        if name.startswith(_VISION_PREFIXES):
            return "vision_tower"
        if name.startswith(_PROJECTOR_PREFIXES):
            return "projector"
    return "language_model"


def kind_of(config: dict[str, Any], path: Any) -> str:
    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or []
    if original.is_original(config):
        original.family_of(config, path)  # refuses a model type it does not know
        return "vlm"
    if "vision_config" in config or model_type in VLM_FORMATS:
        if model_type not in VLM_FORMATS:
            raise BackboneSwapError(
                f"{path} is a {model_type or 'multimodal'} model, which backbone-swap cannot read yet",
                f"Supported VLM formats: {', '.join(VLM_FORMATS.values())}",
            )
        return "vlm"
    if any(a.endswith("ForCausalLM") for a in architectures) or (model_type and not architectures):
        return "llm"
    raise BackboneSwapError(
        f"{path} is neither a LLaVA-style VLM nor a causal LM (architectures: {', '.join(architectures) or 'none'})",
        "Pass a LlavaForConditionalGeneration checkpoint as the VLM and an AutoModelForCausalLM checkpoint as the LLM",
    )


def vlm_format(config: dict[str, Any]) -> str:
    """``llava``, ``llava_next`` or ``llava_original`` for a config that ``kind_of`` calls a VLM."""
    return ORIGINAL_FORMAT if original.is_original(config) else config["model_type"]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def vocabulary(ckpt: Checkpoint) -> dict[str, int]:
    """Token string -> id from tokenizer.json (added tokens included), without loading a tokenizer."""
    data = ckpt.tokenizer_json or {}
    vocab = dict(data.get("model", {}).get("vocab", {}) or {}) if isinstance(data.get("model"), dict) else {}
    if isinstance(vocab, list):  # unigram vocabularies are [token, score] pairs
        vocab = {tok: i for i, (tok, _) in enumerate(vocab)}
    for token in data.get("added_tokens", []) or []:
        vocab[token["content"]] = token["id"]
    for id_, token in (ckpt.tokenizer_config.get("added_tokens_decoder") or {}).items():
        if isinstance(token, dict) and "content" in token:
            vocab[token["content"]] = int(id_)
    return vocab


def _embedding_name(names: list[str]) -> str | None:
    candidates = [n for n in names if n.endswith("embed_tokens.weight")]
    return candidates[0] if candidates else None


def _find(names: list[str], prefixes: tuple[str, ...], suffix: str) -> str | None:
    for prefix in prefixes:
        if prefix + suffix in names:
            return prefix + suffix
    return None


def _vision(path: Any, vcfg: dict[str, Any], weights: Any, names: list[str], *, feature_layer: int | list[int],
            select_strategy: str) -> VisionTower:
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


def _original_vision(ckpt: Checkpoint, tower: Checkpoint | None) -> VisionTower | None:
    """The separately stored tower of an original LLaVA checkpoint, checked against what it was trained with."""
    config = ckpt.config
    strategy = original.select_strategy(config, ckpt.path)
    if tower is None:
        return None
    vcfg = original.tower_config(tower)
    names = [name for name, _ in original.tower_tensors(tower)]
    vision = _vision(tower.path, vcfg, tower.weights, names, feature_layer=original.feature_layer(config),
                     select_strategy=strategy)
    trained_with = config.get("mm_hidden_size")
    if trained_with is not None and trained_with != vision.hidden_size:
        raise BackboneSwapError(
            f"the vision tower {tower.path} has hidden size {vision.hidden_size}, but {ckpt.path} was trained "
            f"with mm_hidden_size {trained_with} ({config.get('mm_vision_tower', 'its mm_vision_tower')})",
            "Pass the local folder of the vision tower named in mm_vision_tower",
        )
    return vision


def _projector(ckpt: Checkpoint, names: list[str]) -> Projector:
    first = _find(names, _PROJECTOR_PREFIXES, "linear_1.weight")
    second = _find(names, _PROJECTOR_PREFIXES, "linear_2.weight")
    if first is None or second is None:
        raise BackboneSwapError(
            f"{ckpt.path} has no multi_modal_projector.linear_1/linear_2 weights",
            "Pass a LLaVA checkpoint with its projector (an mlp2x_gelu projector)",
        )
    tensors = {n: list(ckpt.weights.shape(n)) for n in names if n.startswith(_PROJECTOR_PREFIXES)}
    out_features, in_features = ckpt.weights.shape(first)
    return Projector(
        in_features=in_features,
        out_features=out_features,
        activation=ckpt.config.get("projector_hidden_act", "gelu"),
        bias=ckpt.config.get("multimodal_projector_bias", True),
        tensors=tensors,
    )


def _original_projector(ckpt: Checkpoint, names: list[str]) -> Projector:
    """``model.mm_projector``: its first Linear takes the vision features, its last gives the LLM's width."""
    kind = original.projector_type(ckpt.config)
    matrices = sorted((n for n in names if n.endswith(".weight") and len(ckpt.weights.shape(n)) == 2),
                      key=original.projector_layer_index)
    if not matrices:
        raise BackboneSwapError(
            f"{ckpt.path} has no model.mm_projector weights",
            "Pass the checkpoint of the finished LLaVA run (the projector is saved with the model)",
        )
    in_features = ckpt.weights.shape(matrices[0])[1]
    out_features = ckpt.weights.shape(matrices[-1])[0]
    return Projector(
        in_features=in_features,
        out_features=out_features,
        activation="gelu",
        bias=any(n.endswith(".bias") for n in names),
        tensors={n: list(ckpt.weights.shape(n)) for n in names},
        type=kind,
    )


def _dtype_of(ckpt: Checkpoint, names: list[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        counts[ckpt.weights.dtype(n)] = counts.get(ckpt.weights.dtype(n), 0) + 1
    return max(counts, key=counts.__getitem__) if counts else "none"


def read_anatomy(ckpt: Checkpoint, vision_tower: Checkpoint | None = None) -> Anatomy:
    """Name the parts of ``ckpt`` and check that config and weights agree; loads no tensor.

    ``vision_tower`` is the separately stored tower of an original LLaVA checkpoint (``--vision-tower``);
    every other VLM format carries its tower inside.
    """
    config = ckpt.config
    kind = kind_of(config, ckpt.path)
    fmt = vlm_format(config) if kind == "vlm" else None
    if vision_tower is not None and fmt != ORIGINAL_FORMAT:
        raise BackboneSwapError(
            f"--vision-tower is for checkpoints of the original LLaVA training code, and {ckpt.path} is not one",
            "Leave --vision-tower out" + (": this VLM carries its own vision tower" if kind == "vlm" else ""),
        )
    names = ckpt.weights.names()
    if fmt == ORIGINAL_FORMAT:
        original.check_supported(config, ckpt.path)
        text, family = config, original.family_of(config, ckpt.path)
    else:
        text = dict(config.get("text_config") or {}) if kind == "vlm" else config
        family = text.get("model_type", "llama" if kind == "vlm" else config.get("model_type", "unknown"))
    by_part: dict[str, list[str]] = {}
    for name in names:
        by_part.setdefault(component_of(name, kind), []).append(name)
    if fmt == ORIGINAL_FORMAT and by_part.get("vision_tower"):
        raise BackboneSwapError(
            f"{ckpt.path} holds vision tower weights of its own (a tower tuned with the LLM), which backbone-swap "
            "cannot read from an original LLaVA checkpoint yet",
            "Convert it to a transformers LLaVA folder first (transformers' convert_llava_weights_to_hf.py)",
        )
    language = by_part.get("language_model", [])
    embed = _embedding_name(language)
    if embed is None:
        raise BackboneSwapError(
            f"{ckpt.path} has no token embedding (embed_tokens) in its weights",
            "Pass a checkpoint of a decoder LLM such as Llama, Mistral, Qwen2 or Gemma",
        )
    rows, hidden = ckpt.weights.shape(embed)
    config_hidden = text.get("hidden_size", hidden)
    if config_hidden != hidden:
        raise BackboneSwapError(
            f"{ckpt.path}: config.json says hidden_size {config_hidden} but the embedding weights have {hidden}",
            "The config does not belong to these weights; restore the original config.json",
        )
    vocab_size = text.get("vocab_size", rows)
    if vocab_size != rows:
        raise BackboneSwapError(
            f"{ckpt.path}: config.json says vocab_size {vocab_size} but the embedding has {rows} rows",
            "The config does not belong to these weights; restore the original config.json",
        )
    tie = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    if not any(n.endswith("lm_head.weight") for n in language):
        tie = True  # no output matrix on disk: transformers ties it to the input embedding
    vision = projector = None
    settings: dict[str, Any] = {}
    if fmt == ORIGINAL_FORMAT:
        vision = _original_vision(ckpt, vision_tower)
        projector = _original_projector(ckpt, by_part.get("projector", []))
        settings = original.settings(config)
    elif kind == "vlm":
        vision = _vision(ckpt.path, dict(config.get("vision_config") or {}), ckpt.weights,
                         by_part.get("vision_tower", []), feature_layer=config.get("vision_feature_layer", -2),
                         select_strategy=config.get("vision_feature_select_strategy", "default"))
        projector = _projector(ckpt, by_part.get("projector", []))
        if fmt == "llava_next":
            settings = {"image_grid_pinpoints": config.get("image_grid_pinpoints")}
    if projector is not None and vision is not None and projector.in_features != vision.feature_dim:
        if vision_tower is not None:
            raise BackboneSwapError(
                f"the projector of {ckpt.path} takes {projector.in_features} features but the vision tower "
                f"{vision_tower.path} gives {vision.feature_dim}",
                "Pass the local folder of the vision tower named in mm_vision_tower",
            )
        raise BackboneSwapError(
            f"{ckpt.path}: the projector takes {projector.in_features} features but the vision tower gives "
            f"{vision.feature_dim}",
            "The config does not belong to these weights; restore the original config.json",
        )
    vocab = vocabulary(ckpt)
    image_token = image_token_id = None
    if fmt == ORIGINAL_FORMAT:
        image_token = "<image>"  # the original code splices features in at a sentinel id, not a vocabulary token
    elif kind == "vlm":
        image_token = ckpt.processor_config.get("image_token") or "<image>"
        image_token_id = config.get("image_token_index", config.get("image_token_id"))
    known = family in FAMILIES
    notes = []
    if not known:
        notes.append(f"{family} is not in the family registry: LoRA targets are found from the module names")
    elif FAMILIES[family].notes:
        notes.append(FAMILIES[family].notes)
    if ckpt.chat_template is None and kind == "llm":
        notes.append("no chat template: pass --chat-template FILE when transplanting onto it")
    pad = _token_text(ckpt.tokenizer_config.get("pad_token"))
    if pad is None:
        notes.append("no pad token: a dedicated one is added (never the end-of-turn token)")
    parameters = {}
    dtypes = {}
    for part, part_names in by_part.items():
        parameters[part] = sum(_numel(ckpt.weights.shape(n)) for n in part_names)
        dtypes[part] = _dtype_of(ckpt, part_names)
    if fmt == ORIGINAL_FORMAT:
        if vision_tower is not None:
            tower_names = [name for name, _ in original.tower_tensors(vision_tower)]
            parameters["vision_tower"] = sum(_numel(vision_tower.weights.shape(n)) for n in tower_names)
            dtypes["vision_tower"] = _dtype_of(vision_tower, tower_names)
        else:
            notes.append(f"the vision tower ({config.get('mm_vision_tower', 'mm_vision_tower')}) is not stored in "
                         "this folder: pass its local folder with --vision-tower")
        if config.get("mm_use_im_start_end"):
            notes.append("trained with image start/end tokens (mm_use_im_start_end); the transplant does not add them")
    return Anatomy(
        path=str(ckpt.path),
        kind=kind,
        model_type=config.get("model_type", family),
        architecture=(config.get("architectures") or ["unknown"])[0],
        family=family,
        family_known=known,
        hidden_size=hidden,
        vocab_size=vocab_size,
        embedding_rows=rows,
        tie_word_embeddings=tie,
        vision=vision,
        projector=projector,
        image_token=image_token,
        image_token_id=image_token_id,
        chat_template=ckpt.chat_template is not None,
        pad_token=pad,
        eos_token=_token_text(ckpt.tokenizer_config.get("eos_token")),
        dtypes=dtypes,
        parameters=parameters,
        weight_format=ckpt.weights.format,
        weight_files=len(ckpt.weights.files),
        weight_bytes=ckpt.weights.total_bytes(),
        lora_targets=list(lora_targets(family, language)),
        notes=notes + ([] if vocab else ["no tokenizer.json: added tokens are decided by the tokenizer at transplant"]),
        vlm_format=fmt,
        settings=settings,
    )


def lora_targets(family: str, language_names: list[str]) -> tuple[str, ...]:
    """The family's LoRA targets, or every Linear-looking leaf of the decoder layers for an unknown one."""
    if family in FAMILIES:
        return FAMILIES[family].lora_targets
    leaves = set()
    for name in language_names:
        parts = name.split(".")
        if "layers" in parts and parts[-1] == "weight" and name.endswith("proj.weight"):
            leaves.add(parts[-2])
    return tuple(sorted(leaves))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def missing_tower_error(vlm: Anatomy) -> BackboneSwapError:
    """What to do when an original LLaVA checkpoint is given without its separately stored vision tower."""
    tower = vlm.settings.get("mm_vision_tower", "named in mm_vision_tower")
    return BackboneSwapError(
        f"{vlm.path} is a checkpoint of the original LLaVA training code, whose vision tower ({tower}) is stored "
        "separately", "Pass the tower's local folder with --vision-tower PATH")


@dataclass
class Compatibility:
    """What a transplant of ``vlm``'s vision side onto ``llm`` will do, and what stops it."""

    projector_in: int
    projector_out: int
    reuse_projector_possible: bool
    add_tokens: list[str]
    pad_token: str | None
    chat_template: str
    embedding_rows: tuple[int, int]
    problems: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compatibility(vlm: Anatomy, llm: Anatomy, llm_ckpt: Checkpoint, *, image_token: str | None = None,
                  template_override: bool = False) -> Compatibility:
    """Say whether ``llm`` can receive ``vlm``'s vision tower, from metadata alone."""
    if vlm.kind != "vlm" or vlm.projector is None:
        raise BackboneSwapError(f"{vlm.path} is not a VLM", "Give a LLaVA checkpoint as the VLM")
    if llm.kind != "llm":
        raise BackboneSwapError(f"{llm.path} is a VLM, not a causal LM", "Pass a text-only LLM as --llm")
    token = image_token or vlm.image_token or "<image>"
    vocab = vocabulary(llm_ckpt)
    add = [] if token in vocab else [token]
    pad = None
    if llm.pad_token is None:
        pad = "<pad>" if "<pad>" not in vocab else "<|backbone_swap_pad|>"
        add.append(pad)
    new_rows = max(llm.embedding_rows, len(vocab) + len(add)) if vocab else llm.embedding_rows + len(add)
    problems = []
    if vlm.vision is None:
        problems.append(str(missing_tower_error(vlm)))
    if not llm.chat_template and not template_override:
        problems.append(f"{llm.path} has no chat template; pass --chat-template FILE")
    template = "from --chat-template" if template_override else ("the LLM's own" if llm.chat_template else "none")
    notes = list(llm.notes)
    reusable = vlm.projector.out_features == llm.hidden_size and vlm.projector.type == original.REUSABLE_PROJECTOR
    if reusable:
        notes.append("same hidden size: --projector reuse is possible")
    return Compatibility(
        projector_in=vlm.vision.feature_dim if vlm.vision else vlm.projector.in_features,
        projector_out=llm.hidden_size,
        reuse_projector_possible=reusable,
        add_tokens=add,
        pad_token=pad,
        chat_template=template,
        embedding_rows=(llm.embedding_rows, new_rows),
        problems=problems,
        notes=notes,
    )
