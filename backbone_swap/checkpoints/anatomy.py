"""What is inside a VLM or LLM checkpoint, named by part, from its config and weight index alone.

Behaviour is decided by the config (its ``model_type`` and keys), never by a folder name: the VLM format's entry
(``formats``) says where the parts of its checkpoints are, the family registry (``families``) what training needs of
the LLM. Numbers that matter (hidden sizes, vocabulary rows, projector shape) are read from the weight shapes and
checked against the config, because a config that disagrees with its weights is the kind of input that otherwise
fails deep inside a training run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from backbone_swap.checkpoints import original
from backbone_swap.checkpoints.families import FAMILIES, lora_targets
from backbone_swap.checkpoints.folder import Checkpoint
from backbone_swap.checkpoints.formats import FORMATS, VlmFormat, component_of, format_of, is_vlm_config
from backbone_swap.checkpoints.parts import Projector, VisionTower, dtype_of, numel
from backbone_swap.errors import BackboneSwapError


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

    @property
    def format(self) -> VlmFormat | None:
        """The VLM format's registry entry (None for an LLM)."""
        return FORMATS[self.vlm_format] if self.vlm_format else None

    def require(self, command: str) -> None:
        """Refuse ``command`` on a checkpoint that is no VLM, or whose format the command does not take."""
        if self.format is None:
            raise BackboneSwapError(f"{self.path} is not a VLM", "Pass a LLaVA checkpoint (a transplanted one too)")
        self.format.require(command, self.path)


def kind_of(config: dict[str, Any], path: Any) -> str:
    """``vlm`` or ``llm``; a model that is neither is refused."""
    architectures = config.get("architectures") or []
    if is_vlm_config(config):
        format_of(config, path)  # refuses a multimodal model of a format it cannot read
        return "vlm"
    if any(a.endswith("ForCausalLM") for a in architectures) or (config.get("model_type") and not architectures):
        return "llm"
    raise BackboneSwapError(
        f"{path} is neither a LLaVA-style VLM nor a causal LM (architectures: {', '.join(architectures) or 'none'})",
        "Pass a LlavaForConditionalGeneration checkpoint as the VLM and an AutoModelForCausalLM checkpoint as the LLM",
    )


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


def _embedding_shape(ckpt: Checkpoint, text: dict[str, Any], language: list[str]) -> tuple[int, int, int]:
    """Rows and width of the token embedding, checked against the config: a config that does not belong to its
    weights would make every later step build the wrong shapes."""
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
    return rows, hidden, vocab_size


def _check_projector(ckpt: Checkpoint, vision: VisionTower | None, projector: Projector | None,
                     vision_tower: Checkpoint | None) -> None:
    """The projector must read what the tower gives; with ``--vision-tower`` the usual cause is the wrong tower."""
    if projector is None or vision is None or projector.in_features == vision.feature_dim:
        return
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


def _notes(ckpt: Checkpoint, kind: str, family: str, vocab: dict[str, int], pad: str | None) -> list[str]:
    """What a user should know before transplanting onto or from this checkpoint."""
    notes = []
    if family not in FAMILIES:
        notes.append(f"{family} is not in the family registry: LoRA targets are found from the module names")
    elif FAMILIES[family].notes_for(vocab):
        notes.append(FAMILIES[family].notes_for(vocab))
    if ckpt.chat_template is None and kind == "llm":
        notes.append("no chat template: pass --chat-template FILE when transplanting onto it")
    if pad is None:
        notes.append("no pad token: a dedicated one is added (never the end-of-turn token)")
    return notes


def read_anatomy(ckpt: Checkpoint, vision_tower: Checkpoint | None = None) -> Anatomy:
    """Name the parts of ``ckpt`` and check that config and weights agree; loads no tensor.

    ``vision_tower`` is the separately stored tower of a format that does not hold its own (``--vision-tower``).
    """
    config = ckpt.config
    kind = kind_of(config, ckpt.path)
    fmt = format_of(config, ckpt.path) if kind == "vlm" else None
    if vision_tower is not None and (fmt is None or not fmt.separate_tower):
        raise BackboneSwapError(
            f"--vision-tower is for checkpoints of the original LLaVA training code, and {ckpt.path} is not one",
            "Leave --vision-tower out" + (": this VLM carries its own vision tower" if kind == "vlm" else ""),
        )
    names = ckpt.weights.names()
    text, family = fmt.text(config, ckpt.path) if fmt else (config, config.get("model_type", "unknown"))
    by_part: dict[str, list[str]] = {}
    for name in names:
        by_part.setdefault(component_of(name, kind), []).append(name)
    if fmt:
        fmt.check_parts(ckpt, by_part)
    language = by_part.get("language_model", [])
    rows, hidden, vocab_size = _embedding_shape(ckpt, text, language)
    tie = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    if not any(n.endswith("lm_head.weight") for n in language):
        tie = True  # no output matrix on disk: transformers ties it to the input embedding
    vision = projector = None
    image_token = image_token_id = None
    if fmt:
        vision = fmt.vision(ckpt, vision_tower, by_part.get("vision_tower", []))
        projector = fmt.projector(ckpt, by_part.get("projector", []))
        image_token, image_token_id = fmt.image_token(ckpt)
    _check_projector(ckpt, vision, projector, vision_tower)
    known = family in FAMILIES
    vocab = vocabulary(ckpt)
    pad = _token_text(ckpt.tokenizer_config.get("pad_token"))
    notes = _notes(ckpt, kind, family, vocab, pad)
    parameters = {}
    dtypes = {}
    for part, part_names in by_part.items():
        parameters[part] = sum(numel(ckpt.weights.shape(n)) for n in part_names)
        dtypes[part] = dtype_of(ckpt.weights, part_names)
    if fmt:
        outside = fmt.tower_parts(vision_tower)
        if outside is not None:
            parameters["vision_tower"], dtypes["vision_tower"] = outside
        notes += fmt.notes(ckpt, vision_tower)
    if not vocab:
        notes.append("no tokenizer.json: added tokens are decided by the tokenizer at transplant")
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
        notes=notes,
        vlm_format=fmt.name if fmt else None,
        settings=fmt.settings(config) if fmt else {},
    )


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
    notes = []  # the LLM's own notes are the LLM's to show, once
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
