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
from backbone_swap.runs import TRANSPLANT, RunFolder, staged_dir, step_record, write_json


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

    build = _Build(old, new, old_anatomy, new_anatomy, compat, trust_remote_code, dtype=dtype,
                   pad_vocab_to=pad_vocab_to, tower=tower)
    build.prepare_tokenizer(template_text)
    build.prepare_config()
    planned = build.plan_tensors(projector=projector, seed=seed)

    inputs = {
        "vlm": {"path": str(old.path), "weights": _hashes(old) if hash_inputs else {}},
        "llm": {"path": str(new.path), "weights": _hashes(new) if hash_inputs else {}},
    }
    if tower is not None:
        inputs["vision_tower"] = {"path": str(tower.path), "weights": _hashes(tower) if hash_inputs else {}}
    total = sum(t.nbytes for t in planned)
    try:
        with staged_dir(output) as stage:
            build.save_metadata(stage)
            with progress_bar("writing weights", total, as_bytes=True) as advance:
                files = st.write_checkpoint(stage, planned, shard_bytes, on_tensor=lambda t: advance(t.nbytes))
            manifest = step_record(
                "transplant",
                inputs=inputs,
                output={"path": str(output), "weight_files": files, "tensors": len(planned), "bytes": total},
                changes=build.changes(projector=projector, seed=seed),
            llm={"family": new_anatomy.family, "kind": llm_kind,
                 "max_position_embeddings": build.config.text_config.max_position_embeddings},
                seconds=round(time.time() - started, 3),
            )
            write_json(stage / "manifest.json", manifest)
    except OSError as e:
        raise BackboneSwapError(
            f"writing {output} failed ({e.strerror or e}); nothing was changed there",
            f"Free space or choose another --output (it needs about {total / 1e9:.2f} GB)",
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


class _Build:
    """The state of one transplant between planning and writing."""

    def __init__(self, old: Checkpoint, new: Checkpoint, old_anatomy: Anatomy, new_anatomy: Anatomy,
                 compat: Compatibility, trust_remote_code: bool, *, dtype: str | None = None,
                 pad_vocab_to: int | None = None, tower: Checkpoint | None = None) -> None:
        self.dtype, self.pad_vocab_to = dtype, pad_vocab_to
        self.old, self.new, self.tower = old, new, tower
        self.format = old_anatomy.format  # the VLM's format, and the one its transplant is written in:
        self.output_format = self.format.output
        self.old_anatomy, self.new_anatomy = old_anatomy, new_anatomy
        self.compat = compat
        self.trust_remote_code = trust_remote_code
        self.image_token = old_anatomy.image_token or "<image>"

    # -- tokenizer and template -------------------------------------------------------------------
    def prepare_tokenizer(self, template_override: str | None) -> None:
        from tokenizers import AddedToken
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(self.new.path, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise BackboneSwapError(
                f"the tokenizer of {self.new.path} could not be loaded ({str(e).splitlines()[0]})",
                "Make sure the folder holds tokenizer.json or the tokenizer files of its family",
            ) from None
        self.original_len = len(tok)
        self.added: list[str] = []
        # registered as a special token even when the vocabulary already has the string, so that the text
        # "<image>" is never split or merged with its neighbours; an existing id is reused
        before = len(tok)
        tok.add_tokens([AddedToken(self.image_token, special=True, normalized=False)], special_tokens=True)
        if len(tok) > before:
            self.added.append(self.image_token)
        template = template_override if template_override is not None else tok.chat_template
        if not template:
            raise BackboneSwapError(f"{self.new.path} has no chat template", "Pass --chat-template FILE")
        self.end_of_turn = end_of_turn(tok, template)
        if tok.pad_token is None or tok.pad_token == self.end_of_turn:
            # padding is masked from the loss, so a pad that doubles as end of turn is never learned
            pad = next(p for p in ("<pad>", "<|backbone_swap_pad|>") if p not in tok.get_vocab())
            tok.add_special_tokens({"pad_token": pad})
            self.added.append(pad)
        ids = tok.encode(self.image_token, add_special_tokens=False)
        if len(ids) != 1:
            raise BackboneSwapError(
                f"the image token {self.image_token!r} is split into {len(ids)} tokens by {self.new.path}'s tokenizer",
                "Pass a tokenizer in which it is one token",
            )
        self.image_token_id = ids[0]
        self.llm_template = template
        tok.chat_template = processor_template(template, self.image_token)
        self.tokenizer = tok
        self.added_ids = [tok.convert_tokens_to_ids(t) for t in self.added]
        self.rows = max(self.new_anatomy.embedding_rows, len(tok))
        if self.pad_vocab_to:  # e.g. 64: tensor-core friendly shapes; the extra rows start at the mean too
            self.rows = -(-self.rows // self.pad_vocab_to) * self.pad_vocab_to

    # -- config -----------------------------------------------------------------------------------
    def prepare_config(self) -> None:
        from transformers import AutoConfig

        text = AutoConfig.from_pretrained(self.new.path, trust_remote_code=self.trust_remote_code)
        text.vocab_size = self.rows
        text.pad_token_id = self.tokenizer.pad_token_id
        old = self.old.config
        vision = self.old_anatomy.vision
        assert vision is not None and self.old_anatomy.projector is not None
        common = dict(
            vision_config=self._vision_config(),
            text_config=text,
            image_token_index=self.image_token_id,
            projector_hidden_act=self.old_anatomy.projector.activation,
            vision_feature_layer=vision.feature_layer,
            vision_feature_select_strategy=vision.select_strategy,
            multimodal_projector_bias=self.old_anatomy.projector.bias,
            tie_word_embeddings=self.new_anatomy.tie_word_embeddings,
        )
        self.config = self.output_format.output_config(common, old, vision)
        if self.dtype is not None:
            self.config.dtype = self.dtype
        else:
            self.config.dtype = st.TORCH_DTYPES.get(self.new_anatomy.dtypes.get("language_model", "F32"), "float32")
        self.expected = self._expected_shapes()

    def _vision_config(self) -> dict[str, Any]:
        if self.tower is not None:
            return original.tower_config(self.tower)
        return dict(self.old.config["vision_config"])

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the tensors the output's model class will ask for, from a meta model."""
        import torch
        import transformers

        model_class = getattr(transformers, self.output_format.model_class)
        try:
            with torch.device("meta"):
                model = model_class(self.config)
        except (ValueError, KeyError) as e:
            raise BackboneSwapError(
                f"transformers cannot build a LLaVA model around {self.new.path} ({str(e).splitlines()[0]})",
                "Use an LLM family that transformers supports natively",
            ) from None
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if self.new_anatomy.tie_word_embeddings:
            shapes.pop("lm_head.weight", None)
        return shapes

    # -- tensors ----------------------------------------------------------------------------------
    def plan_tensors(self, *, projector: str, seed: int) -> list[st.PlannedTensor]:
        planned = self._vision_tensors()
        if projector == "reuse":
            planned += self._reused_projector()
        else:
            planned += self._new_projector(seed)
        planned += self._language_tensors()
        self._check_against_model(planned)
        if self.dtype is not None:
            planned = [self._cast(t, FLOAT_DTYPES[self.dtype]) for t in planned]
        return planned

    @staticmethod
    def _cast(tensor: st.PlannedTensor, dtype: str) -> st.PlannedTensor:
        """The tensor converted to ``dtype`` as it is written (floating-point tensors only)."""
        if tensor.dtype == dtype or tensor.dtype not in FLOAT_DTYPES.values():
            return tensor

        def produce() -> bytes:
            import torch

            raw = bytearray(tensor.produce())
            source = getattr(torch, st.TORCH_DTYPES[tensor.dtype])
            values = torch.frombuffer(raw, dtype=source) if raw else torch.empty(0, dtype=source)
            return st.tensor_to_bytes(values.to(getattr(torch, st.TORCH_DTYPES[dtype])))

        return st.PlannedTensor(tensor.name, dtype, tensor.shape, produce)

    def _vision_sources(self) -> list[tuple[Checkpoint, str, str]]:
        """(checkpoint, tensor name, name inside the tower) of every vision tower tensor to copy."""
        if self.tower is not None:
            return [(self.tower, name, rest) for name, rest in original.tower_tensors(self.tower)]
        return [(self.old, name, name.split("vision_tower.", 1)[1]) for name in self.old.weights.names()
                if component_of(name, "vlm") == "vision_tower"]

    def _vision_tensors(self) -> list[st.PlannedTensor]:
        targets = {k for k in self.expected if k.startswith("model.vision_tower.")}
        planned = []
        for source, name, rest in self._vision_sources():
            candidates = [rest, rest.removeprefix("vision_model."), "vision_model." + rest]
            target = next((f"model.vision_tower.{c}" for c in candidates if f"model.vision_tower.{c}" in targets),
                          None)
            if target is None:
                if "position_ids" in rest:
                    continue  # a buffer some old checkpoints saved; transformers rebuilds it
                raise BackboneSwapError(
                    f"{source.path} has vision tensor {name}, which a {self.old_anatomy.vision.model_type} "
                    "tower does not have",
                    "The checkpoint's vision weights do not match its config",
                )
            planned.append(source.weights.copy(name, target))
        return planned

    def _reused_projector(self) -> list[st.PlannedTensor]:
        planned = []
        for name in self.old.weights.names():
            if component_of(name, "vlm") != "projector":
                continue
            planned.append(self.old.weights.copy(name, self.format.projector_target(name)))
        return planned

    def _new_projector(self, seed: int) -> list[st.PlannedTensor]:
        """LLaVA's mlp2x_gelu projector with PyTorch's default Linear init, drawn from ``seed`` alone.

        LLaVA-NeXT's ``image_newline`` lives in the LLM's embedding space after the projector, so it is new
        with it (drawn as transformers initialises it: normal with std 1/sqrt(hidden size)).
        """
        import torch

        dtype_name = self.config.dtype if isinstance(self.config.dtype, str) else "float32"
        dtype = getattr(torch, dtype_name)
        hidden = self.compat.projector_out
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            first = torch.nn.Linear(self.compat.projector_in, hidden, bias=self.old_anatomy.projector.bias)
            second = torch.nn.Linear(hidden, hidden, bias=self.old_anatomy.projector.bias)
            newline = torch.randn(hidden) / math.sqrt(hidden)
        named = [(f"model.multi_modal_projector.{layer_name}.{param_name}", param.detach())
                 for layer_name, layer in (("linear_1", first), ("linear_2", second))
                 for param_name, param in layer.named_parameters()]
        if self.output_format.image_newline:
            named.append(("model.image_newline", newline))
        planned = []
        for name, value in named:
            tensor = value.to(dtype)
            planned.append(st.PlannedTensor(name, st.safetensors_dtype(dtype), tuple(tensor.shape),
                                            lambda t=tensor: st.tensor_to_bytes(t)))
        return planned

    def _language_tensors(self) -> list[st.PlannedTensor]:
        planned = []
        weights = self.new.weights
        for name in weights.names():
            if name.startswith("model."):
                target = "model.language_model." + name.removeprefix("model.")
            elif name == "lm_head.weight":
                if self.new_anatomy.tie_word_embeddings:
                    continue
                target = name
            else:
                target = name  # reported by the check against the model below
            if target.endswith("embed_tokens.weight") or target == "lm_head.weight":
                planned.append(self._resized(name, target))
            else:
                planned.append(weights.copy(name, target))
        return planned

    def _resized(self, name: str, target: str) -> st.PlannedTensor:
        """The embedding (or output) matrix with rows for added tokens set to the mean of the original rows."""
        weights = self.new.weights
        old_rows, hidden = weights.shape(name)
        if self.rows == old_rows and not self.added_ids:
            return weights.copy(name, target)
        mean_rows = min(old_rows, self.original_len)
        rows, added_ids = self.rows, list(self.added_ids)

        def produce() -> bytes:
            import torch

            matrix = weights.read_tensor(name)
            out = torch.empty((rows, hidden), dtype=matrix.dtype)
            out[:old_rows] = matrix
            mean = matrix[:mean_rows].float().mean(dim=0).to(matrix.dtype)
            out[old_rows:] = mean
            for i in added_ids:
                out[i] = mean
            return st.tensor_to_bytes(out)

        return st.PlannedTensor(target, weights.dtype(name), (rows, hidden), produce)

    def _check_against_model(self, planned: list[st.PlannedTensor]) -> None:
        have = {t.name: t.shape for t in planned}
        unexpected = sorted(set(have) - set(self.expected))
        missing = sorted(set(self.expected) - set(have))
        wrong = sorted(k for k in set(have) & set(self.expected) if have[k] != self.expected[k])
        if unexpected or missing or wrong:
            detail = (
                f"unexpected {unexpected[0]}" if unexpected
                else f"missing {missing[0]}" if missing
                else f"{wrong[0]} has shape {list(have[wrong[0]])}, expected {list(self.expected[wrong[0]])}"
            )
            count = len(unexpected) + len(missing) + len(wrong)
            raise BackboneSwapError(
                f"the weights do not fit a LLaVA model built from these configs ({count} tensors differ, first: "
                f"{detail})",
                "Check that each checkpoint's config.json belongs to its weights",
            )

    # -- metadata ---------------------------------------------------------------------------------
    def save_metadata(self, stage: Path) -> None:
        import transformers
        from transformers import AutoImageProcessor, GenerationConfig

        self.config.save_pretrained(stage)
        try:
            generation = GenerationConfig.from_pretrained(self.new.path)
        except OSError:
            generation = GenerationConfig.from_model_config(self.config.text_config)
        generation.pad_token_id = self.tokenizer.pad_token_id
        if self.end_of_turn is not None:
            # the VLM is trained to end each reply with the template's end of turn, which for base LLMs
            # (Llama 3's <|eot_id|>, Qwen's <|im_end|>) is not the eos of pre-training: stop on either
            eos = generation.eos_token_id
            stops = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
            eot_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
            generation.eos_token_id = stops + [eot_id] if eot_id not in stops else stops
        generation.save_pretrained(stage)
        source = self.tower or self.old
        try:
            image_processor = AutoImageProcessor.from_pretrained(source.path)
        except (OSError, ValueError) as e:
            raise BackboneSwapError(
                f"the image processor of {source.path} could not be loaded ({str(e).splitlines()[0]})",
                f"The {'vision tower' if self.tower else 'VLM'} folder needs its preprocessor_config.json or "
                "processor_config.json",
            ) from None
        vision = self.old_anatomy.vision
        processor = getattr(transformers, self.output_format.processor_class)(
            image_processor=image_processor,
            tokenizer=self.tokenizer,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=vision.select_strategy,
            num_additional_image_tokens=VISION_TOWERS[vision.model_type],
            image_token=self.image_token,
            chat_template=self.tokenizer.chat_template,
        )
        processor.save_pretrained(stage)

    def changes(self, *, projector: str, seed: int) -> dict[str, Any]:
        return {
            "added_tokens": {t: i for t, i in zip(self.added, self.added_ids, strict=True)},
            "pad_token": self.tokenizer.pad_token,
            "end_of_turn": self.end_of_turn,
            "image_token": {"text": self.image_token, "id": self.image_token_id},
            "embedding_rows": {"before": self.new_anatomy.embedding_rows, "after": self.rows,
                               "new_rows_init": "mean of the existing rows"},
            "projector": {"init": "pytorch default Linear init" if projector == "new" else "reused from the VLM",
                          "seed": seed if projector == "new" else None,
                          "shape": [self.compat.projector_in, self.compat.projector_out]},
            "chat_template": self.compat.chat_template,
            "vision_tower": f"copied unchanged from the {self._tower_source}" if self.dtype is None
            else f"copied from the {self._tower_source}, cast to {self.dtype}",
            "dtype": self.dtype or "kept per part",
            "image_processor": f"copied from the {self._tower_source}",
            **self.format.changes(self.old_anatomy, projector=projector, seed=seed),
        }

    @property
    def _tower_source(self) -> str:
        return "vision tower folder" if self.tower is not None else "VLM"
