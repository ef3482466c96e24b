"""Build a new VLM from an old VLM's vision side and a newer LLM.

The vision tower is copied byte for byte (the new backbone must see exactly the features the old one
saw), the projector is created for the new hidden size, the LLM's tensors are copied unchanged except the
embedding rows of added tokens. Tensors are streamed one at a time from the input files into the output
files, so memory stays near the largest single tensor whatever the model's size. The result is an
ordinary ``LlavaForConditionalGeneration`` checkpoint with its processor, or a
``LlavaNextForConditionalGeneration`` one when the old VLM is LLaVA-NeXT (its image grid and processor kept).
A checkpoint of the original LLaVA training code is converted on the way in (see ``original_llava``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints import original
from backbone_swap.checkpoints import streaming as st
from backbone_swap.checkpoints.anatomy import Anatomy, Compatibility, compatibility, missing_tower_error, read_anatomy
from backbone_swap.checkpoints.folder import Checkpoint, open_checkpoint
from backbone_swap.checkpoints.formats import component_of
from backbone_swap.checkpoints.parts import VISION_TOWERS
from backbone_swap.checkpoints.templates import end_of_turn, processor_template
from backbone_swap.choices import DTYPES, LLM_KINDS, PROJECTORS, check
from backbone_swap.errors import BackboneSwapError
from backbone_swap.progress import progress_bar
from backbone_swap.runs import TRANSPLANT, RunFolder, resolved, staged_dir, step_record, write_json
from backbone_swap.units import fmt_bytes


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"`` or a byte count, as bytes."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    s = text.strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * factor)
            except ValueError:
                break
    try:
        return int(s)
    except ValueError:
        raise BackboneSwapError(f"{text!r} is not a size", "Write it like 5GB or 500MB") from None


# the safetensors name of each --dtype choice; without --dtype every part keeps its own dtype
FLOAT_DTYPES = {name: st.safetensors_dtype(name) for name in DTYPES}


@dataclass
class TransplantResult:
    output: Path
    manifest: dict[str, Any]


def transplant(
    vlm: str | Path,
    llm: str | Path,
    output: str | Path,
    *,
    seed: int = 0,
    projector: str = "new",
    chat_template: str | Path | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    max_shard_size: str | int = "5GB",
    hash_inputs: bool = True,
    llm_kind: str = "unknown",
    dtype: str | None = None,
    pad_vocab_to: int | None = None,
    vision_tower: str | Path | None = None,
) -> TransplantResult:
    """Put ``vlm``'s vision tower in front of ``llm`` with a new projector and write it to ``output``.

    ``projector`` is ``"new"`` (fresh init from ``seed``) or ``"reuse"`` (copy the old projector, only
    when its shapes fit the new hidden size). ``vision_tower`` is the local folder of the tower an original
    LLaVA checkpoint names in ``mm_vision_tower`` (such checkpoints do not store it).
    """
    started = time.time()
    check(llm_kind, LLM_KINDS, "--llm-kind", "Say whether the new LLM is a base or an instruction-tuned model")
    if dtype is not None:
        check(dtype, DTYPES, "--dtype", "Leave it out to keep each part's dtype")
    if pad_vocab_to is not None and pad_vocab_to < 1:
        raise BackboneSwapError(f"--pad-vocab-to must be a positive number, not {pad_vocab_to}", "Use e.g. 64")
    check(projector, PROJECTORS, "--projector")
    old = open_checkpoint(vlm, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    new = open_checkpoint(llm, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    tower = None
    if vision_tower is not None:
        tower = open_checkpoint(vision_tower, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    old_anatomy, new_anatomy = read_anatomy(old, vision_tower=tower), read_anatomy(new)
    old_anatomy.require("transplant")
    if old_anatomy.vision is None:
        raise missing_tower_error(old_anatomy)
    template_text = _read_template(chat_template)
    compat = compatibility(old_anatomy, new_anatomy, new, template_override=template_text is not None)
    if compat.problems:
        raise BackboneSwapError(compat.problems[0], "")
    if projector == "reuse" and not compat.reuse_projector_possible:
        if old_anatomy.projector.type != original.REUSABLE_PROJECTOR:
            raise BackboneSwapError(
                f"the old projector is {old_anatomy.projector.type}, which a LLaVA model cannot hold, so it "
                "cannot be reused", "Use --projector new (the default)")
        raise BackboneSwapError(
            f"the old projector outputs {old_anatomy.projector.out_features} features but {new.path} has "
            f"hidden size {new_anatomy.hidden_size}, so it cannot be reused",
            "Use --projector new (the default)",
        )
    inputs_read = [old.path, new.path] + ([tower.path] if tower is not None else [])
    output = RunFolder(output, TRANSPLANT, inputs=[("input", path) for path in inputs_read]).path.resolve()
    if output.exists() and not overwrite:
        raise BackboneSwapError(f"{output} already exists", "Choose another --output, or pass --overwrite")
    shard_bytes = parse_size(max_shard_size)

    sources = Sources(old, new, tower, old_anatomy, new_anatomy, compat, trust_remote_code)
    tokens = plan_tokenizer(sources, template_text, pad_vocab_to=pad_vocab_to)
    config = build_config(sources, tokens, dtype=dtype)
    planned = plan_tensors(sources, tokens, config, projector=projector, seed=seed, dtype=dtype)

    inputs = {
        "vlm": {"path": resolved(old.path), "weights": _hashes(old) if hash_inputs else {}},
        "llm": {"path": resolved(new.path), "weights": _hashes(new) if hash_inputs else {}},
    }
    if tower is not None:
        inputs["vision_tower"] = {"path": resolved(tower.path), "weights": _hashes(tower) if hash_inputs else {}}
    total = sum(t.nbytes for t in planned)
    try:
        with staged_dir(output) as stage:
            write_metadata(stage, sources, tokens, config)
            with progress_bar("writing weights", total, as_bytes=True) as advance:
                files = st.write_checkpoint(stage, planned, shard_bytes, on_tensor=lambda t: advance(t.nbytes))
            manifest = step_record(
                "transplant",
                inputs=inputs,
                output={"path": resolved(output), "weight_files": files, "tensors": len(planned), "bytes": total},
                changes=describe_changes(sources, tokens, projector=projector, seed=seed, dtype=dtype),
                llm={"family": new_anatomy.family, "kind": llm_kind,
                     "max_position_embeddings": config.text_config.max_position_embeddings},
                seconds=round(time.time() - started, 3),
            )
            write_json(stage / "manifest.json", manifest)
    except OSError as e:
        raise BackboneSwapError(
            f"writing {output} failed ({e.strerror or e}); nothing was changed there",
            f"Free space or choose another --output (it needs about {fmt_bytes(total)})",
        ) from None
    return TransplantResult(output, manifest)


def _read_template(chat_template: str | Path | None) -> str | None:
    if chat_template is None:
        return None
    path = Path(chat_template).expanduser()
    if not path.is_file():
        raise BackboneSwapError(f"chat template file {path} does not exist", "Pass a Jinja template file")
    return path.read_text(encoding="utf-8")


def _hashes(ckpt: Checkpoint) -> dict[str, str]:
    with progress_bar(f"hashing {ckpt.path.name}", ckpt.weights.total_bytes(), as_bytes=True) as advance:
        return ckpt.sha256(advance)


@dataclass(frozen=True)
class Sources:
    """What a transplant reads: the old VLM, the newer LLM, and the separately stored tower of an original LLaVA
    checkpoint, with their anatomies and what the pair allows."""

    old: Checkpoint
    new: Checkpoint
    tower: Checkpoint | None
    old_anatomy: Anatomy
    new_anatomy: Anatomy
    compat: Compatibility
    trust_remote_code: bool = False

    @property
    def image_token(self) -> str:
        return self.old_anatomy.image_token or "<image>"

    @property
    def tower_source(self) -> str:
        return "vision tower folder" if self.tower is not None else "VLM"


@dataclass(frozen=True)
class TokenizerPlan:
    """The new LLM's tokenizer as the transplant leaves it: the image token and a pad token added when missing, the
    template taught to place images, and the embedding rows the model will need."""

    tokenizer: Any
    added: tuple[str, ...]  # tokens added to the vocabulary
    added_ids: tuple[int, ...]
    original_len: int  # the vocabulary before: the rows whose mean starts the new ones
    image_token_id: int
    end_of_turn: str | None
    rows: int  # embedding rows of the output (padded to a multiple with --pad-vocab-to)


# -- step 1: the tokenizer --------------------------------------------------------------------------------------
def plan_tokenizer(src: Sources, template_override: str | None, *, pad_vocab_to: int | None = None) -> TokenizerPlan:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.new.path, trust_remote_code=src.trust_remote_code)
    except (OSError, ValueError) as e:
        raise BackboneSwapError(
            f"the tokenizer of {src.new.path} could not be loaded ({str(e).splitlines()[0]})",
            "Make sure the folder holds tokenizer.json or the tokenizer files of its family",
        ) from None
    original_len = len(tok)
    added: list[str] = []
    # registered as a special token even when the vocabulary already has the string, so that the text "<image>" is
    # never split or merged with its neighbours; an existing id is reused
    tok.add_tokens([AddedToken(src.image_token, special=True, normalized=False)], special_tokens=True)
    if len(tok) > original_len:
        added.append(src.image_token)
    template = template_override if template_override is not None else tok.chat_template
    if not template:
        raise BackboneSwapError(f"{src.new.path} has no chat template", "Pass --chat-template FILE")
    eot = end_of_turn(tok, template)
    if tok.pad_token is None or tok.pad_token == eot:
        # padding is masked from the loss, so a pad that doubles as end of turn is never learned
        pad = next(p for p in ("<pad>", "<|backbone_swap_pad|>") if p not in tok.get_vocab())
        tok.add_special_tokens({"pad_token": pad})
        added.append(pad)
    ids = tok.encode(src.image_token, add_special_tokens=False)
    if len(ids) != 1:
        raise BackboneSwapError(
            f"the image token {src.image_token!r} is split into {len(ids)} tokens by {src.new.path}'s tokenizer",
            "Pass a tokenizer in which it is one token",
        )
    tok.chat_template = processor_template(template, src.image_token)
    rows = max(src.new_anatomy.embedding_rows, len(tok))
    if pad_vocab_to:  # e.g. 64: tensor-core friendly shapes; the extra rows start at the mean too
        rows = -(-rows // pad_vocab_to) * pad_vocab_to
    return TokenizerPlan(tok, tuple(added), tuple(tok.convert_tokens_to_ids(t) for t in added), original_len, ids[0],
                         eot, rows)


# -- step 2: the config ---------------------------------------------------------------------------------------
def build_config(src: Sources, tokens: TokenizerPlan, *, dtype: str | None = None):
    """The output's config: the old VLM's vision side and its format's settings, the new LLM's text config."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(src.new.path, trust_remote_code=src.trust_remote_code)
    text.vocab_size = tokens.rows
    text.pad_token_id = tokens.tokenizer.pad_token_id
    vision, projector = src.old_anatomy.vision, src.old_anatomy.projector
    assert vision is not None and projector is not None
    tower_config = original.tower_config(src.tower) if src.tower is not None else dict(src.old.config["vision_config"])
    common = dict(
        vision_config=tower_config,
        text_config=text,
        image_token_index=tokens.image_token_id,
        projector_hidden_act=projector.activation,
        vision_feature_layer=vision.feature_layer,
        vision_feature_select_strategy=vision.select_strategy,
        multimodal_projector_bias=projector.bias,
        tie_word_embeddings=src.new_anatomy.tie_word_embeddings,
    )
    config = src.old_anatomy.format.output.output_config(common, src.old.config, vision)
    config.dtype = dtype or st.TORCH_DTYPES.get(src.new_anatomy.dtypes.get("language_model", "F32"), "float32")
    return config


# -- step 3: the tensors --------------------------------------------------------------------------------------
def plan_tensors(src: Sources, tokens: TokenizerPlan, config, *, projector: str, seed: int,
                 dtype: str | None = None) -> list[st.PlannedTensor]:
    """Every tensor of the output, in writing order, checked against the model class the config builds; none is
    read yet (each is produced when the writer reaches it)."""
    expected = _expected_shapes(src, config)
    planned = _vision_tensors(src, expected)
    planned += _reused_projector(src) if projector == "reuse" else _new_projector(src, config, seed)
    planned += _language_tensors(src, tokens)
    _check_against_model(planned, expected)
    if dtype is not None:
        planned = [_cast(t, FLOAT_DTYPES[dtype]) for t in planned]
    return planned


def _expected_shapes(src: Sources, config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors the output's model class will ask for, from a meta model."""
    import torch
    import transformers

    model_class = getattr(transformers, src.old_anatomy.format.output.model_class)
    try:
        with torch.device("meta"):
            model = model_class(config)
    except (ValueError, KeyError) as e:
        raise BackboneSwapError(
            f"transformers cannot build a LLaVA model around {src.new.path} ({str(e).splitlines()[0]})",
            "Use an LLM family that transformers supports natively",
        ) from None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if src.new_anatomy.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _cast(tensor: st.PlannedTensor, dtype: str) -> st.PlannedTensor:
    """The tensor converted to ``dtype`` as it is written (floating-point tensors only), piece by piece."""
    if tensor.dtype == dtype or tensor.dtype not in FLOAT_DTYPES.values():
        return tensor

    def produce() -> Iterator[bytes]:
        import torch

        source, target = (getattr(torch, st.TORCH_DTYPES[d]) for d in (tensor.dtype, dtype))
        for piece in st.pieces(tensor):
            raw = bytearray(piece)
            values = torch.frombuffer(raw, dtype=source) if raw else torch.empty(0, dtype=source)
            yield st.tensor_to_bytes(values.to(target))

    return st.PlannedTensor(tensor.name, dtype, tensor.shape, produce)


def _vision_tensors(src: Sources, expected: dict[str, tuple[int, ...]]) -> list[st.PlannedTensor]:
    """The tower's tensors, copied file to file under the names the output's model class uses."""
    if src.tower is not None:
        sources = [(src.tower, name, rest) for name, rest in original.tower_tensors(src.tower)]
    else:
        sources = [(src.old, name, name.split("vision_tower.", 1)[1]) for name in src.old.weights.names()
                   if component_of(name, "vlm") == "vision_tower"]
    targets = {k for k in expected if k.startswith("model.vision_tower.")}
    planned = []
    for source, name, rest in sources:
        candidates = [rest, rest.removeprefix("vision_model."), "vision_model." + rest]
        target = next((f"model.vision_tower.{c}" for c in candidates if f"model.vision_tower.{c}" in targets), None)
        if target is None:
            if "position_ids" in rest:
                continue  # a buffer some old checkpoints saved; transformers rebuilds it
            raise BackboneSwapError(
                f"{source.path} has vision tensor {name}, which a {src.old_anatomy.vision.model_type} "
                "tower does not have",
                "The checkpoint's vision weights do not match its config",
            )
        planned.append(source.weights.copy(name, target))
    return planned


def _reused_projector(src: Sources) -> list[st.PlannedTensor]:
    return [src.old.weights.copy(name, src.old_anatomy.format.projector_target(name))
            for name in src.old.weights.names() if component_of(name, "vlm") == "projector"]


def _new_projector(src: Sources, config, seed: int) -> list[st.PlannedTensor]:
    """LLaVA's mlp2x_gelu projector with PyTorch's default Linear init, drawn from ``seed`` alone.

    LLaVA-NeXT's ``image_newline`` lives in the LLM's embedding space after the projector, so it is new with it
    (drawn as transformers initialises it: normal with std 1/sqrt(hidden size)).
    """
    import torch

    dtype = getattr(torch, config.dtype if isinstance(config.dtype, str) else "float32")
    hidden, bias = src.compat.projector_out, src.old_anatomy.projector.bias
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first = torch.nn.Linear(src.compat.projector_in, hidden, bias=bias)
        second = torch.nn.Linear(hidden, hidden, bias=bias)
        newline = torch.randn(hidden) / math.sqrt(hidden)
    named = [(f"model.multi_modal_projector.{layer_name}.{param_name}", param.detach())
             for layer_name, layer in (("linear_1", first), ("linear_2", second))
             for param_name, param in layer.named_parameters()]
    if src.old_anatomy.format.output.image_newline:
        named.append(("model.image_newline", newline))
    planned = []
    for name, value in named:
        tensor = value.to(dtype)
        planned.append(st.PlannedTensor(name, st.safetensors_dtype(dtype), tuple(tensor.shape),
                                        lambda t=tensor: st.tensor_to_bytes(t)))
    return planned


def _language_tensors(src: Sources, tokens: TokenizerPlan) -> list[st.PlannedTensor]:
    planned = []
    weights = src.new.weights
    for name in weights.names():
        if name.startswith("model."):
            target = "model.language_model." + name.removeprefix("model.")
        elif name == "lm_head.weight":
            if src.new_anatomy.tie_word_embeddings:
                continue
            target = name
        else:
            target = name  # reported by the check against the model
        if target.endswith("embed_tokens.weight") or target == "lm_head.weight":
            planned.append(_resized(weights, name, target, tokens))
        else:
            planned.append(weights.copy(name, target))
    return planned


# rows of an embedding read, or written, at a time: memory stays near one chunk, not the matrix
_CHUNK_BYTES = 64 * 1024 * 1024


def _resized(weights, name: str, target: str, tokens: TokenizerPlan) -> st.PlannedTensor:
    """The embedding (or output) matrix with rows for added tokens set to the mean of the original rows.

    Streamed: the mean is accumulated a chunk of rows at a time (in float64), then the original rows are copied a
    chunk at a time and the new ones appended, so a 128K-row vocabulary never sits in memory whole, let alone in
    float32.
    """
    old_rows, hidden = weights.shape(name)
    if tokens.rows == old_rows and not tokens.added_ids:
        return weights.copy(name, target)
    mean_rows = min(old_rows, tokens.original_len)
    rows, added_ids = tokens.rows, set(tokens.added_ids)
    step = max(1, _CHUNK_BYTES // (hidden * st.DTYPE_SIZES[weights.dtype(name)]))

    def produce() -> Iterator[bytes]:
        import torch

        total = torch.zeros(hidden, dtype=torch.float64)
        for start in range(0, mean_rows, step):
            total += weights.read_rows(name, start, min(start + step, mean_rows)).double().sum(dim=0)
        dtype = getattr(torch, st.TORCH_DTYPES[weights.dtype(name)])
        mean = (total / max(mean_rows, 1)).to(dtype)
        for start in range(0, old_rows, step):
            chunk = weights.read_rows(name, start, min(start + step, old_rows)).clone()
            for i in added_ids:  # an added token whose id falls among the existing rows starts at the mean too
                if start <= i < start + len(chunk):
                    chunk[i - start] = mean
            yield st.tensor_to_bytes(chunk)
        for start in range(old_rows, rows, step):
            yield st.tensor_to_bytes(mean.expand(min(start + step, rows) - start, hidden))

    return st.PlannedTensor(target, weights.dtype(name), (rows, hidden), produce)


def _check_against_model(planned: list[st.PlannedTensor], expected: dict[str, tuple[int, ...]]) -> None:
    have = {t.name: t.shape for t in planned}
    unexpected = sorted(set(have) - set(expected))
    missing = sorted(set(expected) - set(have))
    wrong = sorted(k for k in set(have) & set(expected) if have[k] != expected[k])
    if unexpected or missing or wrong:
        detail = (
            f"unexpected {unexpected[0]}" if unexpected
            else f"missing {missing[0]}" if missing
            else f"{wrong[0]} has shape {list(have[wrong[0]])}, expected {list(expected[wrong[0]])}"
        )
        count = len(unexpected) + len(missing) + len(wrong)
        raise BackboneSwapError(
            f"the weights do not fit a LLaVA model built from these configs ({count} tensors differ, first: "
            f"{detail})",
            "Check that each checkpoint's config.json belongs to its weights",
        )


# -- step 4: the files beside the weights -----------------------------------------------------------------------
def write_metadata(stage: Path, src: Sources, tokens: TokenizerPlan, config) -> None:
    """The config, the generation config and the processor (tokenizer, image processor, template) of the output."""
    import transformers
    from transformers import AutoImageProcessor, GenerationConfig

    config.save_pretrained(stage)
    tokenizer = tokens.tokenizer
    try:
        generation = GenerationConfig.from_pretrained(src.new.path)
    except OSError:
        generation = GenerationConfig.from_model_config(config.text_config)
    generation.pad_token_id = tokenizer.pad_token_id
    if tokens.end_of_turn is not None:
        # the VLM is trained to end each reply with the template's end of turn, which for base LLMs (Llama 3's
        # <|eot_id|>, Qwen's <|im_end|>) is not the eos of pre-training: stop on either
        eos = generation.eos_token_id
        stops = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        eot_id = tokenizer.convert_tokens_to_ids(tokens.end_of_turn)
        generation.eos_token_id = stops + [eot_id] if eot_id not in stops else stops
    generation.save_pretrained(stage)
    source = src.tower or src.old
    try:
        image_processor = AutoImageProcessor.from_pretrained(source.path)
    except (OSError, ValueError) as e:
        raise BackboneSwapError(
            f"the image processor of {source.path} could not be loaded ({str(e).splitlines()[0]})",
            f"The {'vision tower' if src.tower else 'VLM'} folder needs its preprocessor_config.json or "
            "processor_config.json",
        ) from None
    vision = src.old_anatomy.vision
    processor = getattr(transformers, src.old_anatomy.format.output.processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=vision.select_strategy,
        num_additional_image_tokens=VISION_TOWERS[vision.model_type],
        image_token=src.image_token,
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(stage)


def describe_changes(src: Sources, tokens: TokenizerPlan, *, projector: str, seed: int,
                     dtype: str | None) -> dict[str, Any]:
    """Every change the transplant made, in the manifest's words."""
    return {
        "added_tokens": dict(zip(tokens.added, tokens.added_ids, strict=True)),
        "pad_token": tokens.tokenizer.pad_token,
        "end_of_turn": tokens.end_of_turn,
        "image_token": {"text": src.image_token, "id": tokens.image_token_id},
        "embedding_rows": {"before": src.new_anatomy.embedding_rows, "after": tokens.rows,
                           "new_rows_init": "mean of the existing rows"},
        "projector": {"init": "pytorch default Linear init" if projector == "new" else "reused from the VLM",
                      "seed": seed if projector == "new" else None,
                      "shape": [src.compat.projector_in, src.compat.projector_out]},
        "chat_template": src.compat.chat_template,
        "vision_tower": f"copied unchanged from the {src.tower_source}" if dtype is None
        else f"copied from the {src.tower_source}, cast to {dtype}",
        "dtype": dtype or "kept per part",
        "image_processor": f"copied from the {src.tower_source}",
        **src.old_anatomy.format.changes(src.old_anatomy, projector=projector, seed=seed),
    }
