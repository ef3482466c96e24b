"""The training recipe as typed data: frozen pydantic models, loaded from YAML and validated key by key.

A recipe is everything that decides *how* a transplanted VLM is trained, and nothing about *what* it is
trained on: data paths, model paths and output folders are never part of it. That is what makes its hash
meaningful: two runs with the same recipe hash used the same settings, so a resumed run or a comparison
can check it instead of trusting file names.

The errors are for people editing a YAML file or typing ``--set``, so each one names the file and the dotted
key (``stages.stage2.lr``), says what the key takes and what was found, and suggests the fix
(``backbone_swap.schemas`` words them). Everything not listed here is rejected, because a misspelt key that
is silently ignored trains with the default and looks like a backbone effect later.

No torch here: the recipe is loaded (and its mistakes reported) before any heavy import.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from backbone_swap import schemas
from backbone_swap.errors import BackboneSwapError
from backbone_swap.schemas import expect, one_of

SHIPPED_PACKAGE = "backbone_swap.recipes"
STAGE_NAMES: tuple[str, ...] = ("stage1", "stage2")  # also their order: stage 1 aligns, stage 2 tunes
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")
IMAGE_ASPECTS: tuple[str, ...] = ("pad", "resize")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant")
LORA_BIASES: tuple[str, ...] = ("none", "all", "lora_only")  # peft's LoraConfig.bias values
FAMILY_TARGETS = "family"

VOICE = schemas.Voice(document="recipe", fix="Fix {key} in the recipe, or override it with --set {key}=VALUE")

PositiveInt = Annotated[schemas.Integer, Field(ge=1), expect("a positive integer")]
PositiveNumber = Annotated[schemas.Number, Field(gt=0), schemas.NUMERIC_TEXT, expect("a positive number")]
NonNegativeNumber = Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, expect("a non-negative number")]
Fraction = Annotated[schemas.Number, Field(ge=0, lt=1), schemas.NUMERIC_TEXT, expect("at least 0 and below 1")]
Flag = Annotated[schemas.Boolean, expect("true or false")]

# LoRA target names end up inside a regular expression (train.lora_target_regex), so they must be plain
# module names: anything else would silently match other layers, or nothing.
ModuleName = Annotated[schemas.Text, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                       expect("a plain module name such as q_proj")]
ModuleNames = Annotated[tuple[ModuleName, ...], Field(min_length=1)]
_MODULE_NAMES = TypeAdapter(ModuleNames)


def _family_or_module_names(value: Any) -> tuple[str, ...] | str:
    """The whole check of ``targets``, so that a problem names the list item at fault, not a union member."""
    return value if value == FAMILY_TARGETS else _MODULE_NAMES.validate_python(value)


Targets = Annotated[
    tuple[str, ...] | str,
    BeforeValidator(_family_or_module_names),
    expect(f"{FAMILY_TARGETS!r} or a list of module names",
           f"`targets: {FAMILY_TARGETS}` uses the new LLM family's registry; or write a list: [q_proj, v_proj]"),
]


class LoraSettings(schemas.Closed):
    """The LoRA adapter on the language model (never on the vision tower or the projector)."""

    r: PositiveInt
    alpha: PositiveInt
    dropout: Fraction
    bias: one_of(LORA_BIASES) = "none"
    # "family": the LLM family's registry targets (backbone_swap.checkpoints.anatomy.FAMILIES), resolved at training
    # time because the recipe is written before the new LLM is chosen; or an explicit tuple of module names.
    targets: Targets = FAMILY_TARGETS


class Stage(schemas.Closed):
    """One training stage; the vision tower is always frozen, so it is not a setting."""

    # "stage1" / "stage2": the stage's key in the file (so not a key inside it) and its folder in the run directory
    name: SkipJsonSchema[str] = Field(exclude=True)
    train_projector: Flag
    lora: LoraSettings | None = None  # None: the language model stays frozen in this stage
    epochs: PositiveNumber
    max_steps: Annotated[PositiveInt | None, expect("a positive integer or null")] = None  # a cap, for tiny runs
    lr: PositiveNumber  # the LoRA learning rate; the projector's too unless projector_lr is set
    projector_lr: Annotated[PositiveNumber | None, expect("a positive number or null")] = None  # None: same as lr
    global_batch: PositiveInt  # samples per optimizer step, whatever the number of devices
    micro_batch: PositiveInt  # samples per device per forward pass
    warmup_ratio: Fraction
    scheduler: one_of(SCHEDULERS)
    weight_decay: NonNegativeNumber
    max_grad_norm: Annotated[PositiveNumber | None, expect("a positive number or null")] = None  # None: no clipping

    @model_validator(mode="after")
    def _trains_something_in_whole_micro_batches(self) -> Stage:
        key = f"stages.{self.name}"
        if self.global_batch % self.micro_batch:
            raise schemas.broken(("global_batch", f"({self.global_batch}) must be a multiple of {key}.micro_batch "
                                                  f"({self.micro_batch})"),
                                 hint="Each optimizer step accumulates whole micro batches; change one of the two")
        if not self.train_projector and self.lora is None:
            raise schemas.broken(((), "trains nothing"),
                                 hint=f"Set {key}.train_projector: true or give {key}.lora settings")
        return self

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps that keep ``global_batch`` fixed on ``world_size`` devices.

        The global batch is the recipe's promise (LLaVA-1.5's 256 / 128); the device count is the user's
        machine. So the count of devices changes the accumulation, never the number of samples per step.
        """
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise BackboneSwapError(f"the number of devices must be a positive integer, not {schemas.show(world_size)}")
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            key = f"stages.{self.name}"
            fits = [m for m in range(self.micro_batch, 0, -1) if self.global_batch % (m * world_size) == 0]
            hint = (f"Use --set {key}.micro_batch={fits[0]}, or a {key}.global_batch that is a multiple of "
                    f"{per_step}" if fits else f"Use a {key}.global_batch that is a multiple of {world_size}")
            raise BackboneSwapError(
                f"{self.name}: global_batch {self.global_batch} cannot be split into micro batches of "
                f"{self.micro_batch} on {world_size} device{'s' if world_size > 1 else ''}", hint)
        return self.global_batch // per_step


class StagesByName(schemas.Closed):
    """The file's ``stages:`` mapping, each stage named by its key; the field order is the training order."""

    # Absent: no such stage. Not nullable: `stage2:` with nothing under it is a stage left empty by mistake.
    stage1: Stage = None
    stage2: Stage = None

    @model_validator(mode="before")
    @classmethod
    def _named_by_their_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        named = dict(data)
        for key in STAGE_NAMES:
            if isinstance(data.get(key), Mapping):
                if "name" in data[key]:  # the key names the stage; a name inside it could only contradict it
                    raise ValidationError.from_exception_data(
                        cls.__name__, [{"type": "extra_forbidden", "loc": (key, "name"), "input": data[key]["name"]}])
                named[key] = {**data[key], "name": key}
        return named

    @model_validator(mode="after")
    def _some_stage_and_one_adapter(self) -> StagesByName:
        stages = self.in_order()
        if not stages:
            raise schemas.broken(((), "has no stage"), hint=f"Give one or both of {', '.join(STAGE_NAMES)}")
        if len({stage.lora for stage in stages if stage.lora is not None}) > 1:
            # One adapter is created and carried from stage to stage; two settings would mean one is ignored.
            raise schemas.broken(((stages[-1].name, "lora"), f"must equal stages.{stages[0].name}.lora"),
                                 hint="Both stages train the same LoRA adapter; give them the same settings or "
                                      "drop one")
        return self

    def in_order(self) -> tuple[Stage, ...]:
        return tuple(stage for stage in (self.stage1, self.stage2) if stage is not None)


class Recipe(schemas.Closed):
    """Everything that decides how a VLM is trained; paths to data and models are deliberately absent."""

    name: Annotated[schemas.Text, StringConstraints(pattern=r"\S"), expect("a non-empty string")]
    description: Annotated[schemas.Text, expect("a string")] = ""
    seed: Annotated[schemas.Integer, Field(ge=0), expect("a non-negative integer")]
    max_length: PositiveInt  # tokens per sample, prompt and image tokens included
    precision: one_of(PRECISIONS)
    gradient_checkpointing: Flag
    image_aspect: one_of(IMAGE_ASPECTS)  # "pad": pad to square with the mean colour (LLaVA-1.5); "resize": stretch
    group_by_length: Flag
    stages_by_name: StagesByName = Field(alias="stages")  # as the file writes them

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages in training order (stage 1 aligns, stage 2 tunes), whatever the file's order."""
        return self.stages_by_name.in_order()

    def length_for(self, positions: Any) -> int:
        """The longest sample trained on an LLM with ``positions`` positions (None when its config gives none):
        a max_length beyond them would train on positions it never learned."""
        return min(self.max_length, positions) if isinstance(positions, int) and positions > 0 else self.max_length


def recipe_from_dict(data: Mapping[str, Any], source: str) -> Recipe:
    """Validate a parsed recipe (as from YAML) into a ``Recipe``; ``source`` names it in errors.

    Every key is checked, unknown ones included; the first problem raises a ``BackboneSwapError`` naming
    its dotted key. ``name`` defaults to the source's file stem and ``description`` to "".
    """
    if isinstance(data, Mapping):
        data = {"name": Path(source).stem, **data}
    return schemas.validate(Recipe, data, f"recipe {source}", VOICE)


# ----------------------------------------------------------------------------------------------------
# serialising and hashing


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain YAML/JSON data, every key present; ``recipe_from_dict`` gives it back equal."""
    data = recipe.model_dump(mode="json", exclude={"stages_by_name"})
    data["stages"] = {stage.name: stage.model_dump(mode="json") for stage in recipe.stages}
    return data


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the recipe's settings as canonical JSON (sorted keys, no whitespace).

    ``name`` and ``description`` are left out: two files with the same settings train the same way, and
    renaming a recipe must not make a resumable run look like a different one.
    """
    settings = recipe_to_dict(recipe)
    del settings["name"], settings["description"]
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------
# loading and overriding


def shipped_recipes() -> list[str]:
    """Names of the recipes that come with backbone-swap (``backbone_swap.recipes`` package data)."""
    folder = resources.files(SHIPPED_PACKAGE)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir()
                  if entry.name.endswith(".yaml") and entry.is_file())


def load_recipe(ref: str | Path) -> Recipe:
    """A recipe from a YAML file path, or by the name of a shipped one (``llava15-lora`` or ``llava15-lora.yaml``).

    An existing file wins over a shipped name, so a local copy of a shipped recipe can be edited and used
    under the same name.
    """
    path = Path(ref)
    if path.is_file():
        source = str(ref)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BackboneSwapError(f"recipe {source} cannot be read ({error.__class__.__name__})",
                                    "Check that it is a readable UTF-8 text file") from None
    else:
        shipped = shipped_recipes()
        name = str(ref)[: -len(".yaml")] if str(ref).endswith(".yaml") else str(ref)
        if path.is_dir():
            raise BackboneSwapError(f"recipe {ref} is a directory, not a YAML file",
                                    f"Give a recipe file, or one of the shipped recipes: {', '.join(shipped)}")
        if isinstance(ref, Path) or name not in shipped:
            raise BackboneSwapError(f"no recipe file or shipped recipe named {str(ref)!r}",
                                    f"Shipped recipes: {', '.join(shipped)}; or give the path to a YAML file")
        source = f"{name}.yaml"
        text = resources.files(SHIPPED_PACKAGE).joinpath(source).read_text(encoding="utf-8")
    data = schemas.parse_yaml(text, f"recipe {source}")
    if data is None:
        raise BackboneSwapError(f"recipe {source} is empty", "Start from a shipped recipe, e.g. llava15-lora")
    if not isinstance(data, Mapping):
        raise BackboneSwapError(f"recipe {source} must be a mapping of settings, not {schemas.show(data)}",
                                "Write it as `key: value` lines, as in the shipped recipes")
    return recipe_from_dict(data, source)


def _override_path(key: str) -> list[str]:
    """The dotted path of a ``--set`` key: ``stage2.lr`` and ``stages.stage2.lr`` mean the same key."""
    parts = key.split(".")
    if parts[0] in STAGE_NAMES or re.fullmatch(r"stage\d+", parts[0]):
        parts = ["stages", *parts]  # stage3.lr is then reported as the unknown stage it is
    return parts


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """``recipe`` with ``--set KEY=VALUE`` items applied, validated exactly like a recipe file.

    Values are read as YAML (``seed=3`` is an int, ``stage2.lr=1e-4`` a numeric string, ``stage1.lora=null``),
    so what works in a file works here. Only keys of the recipe schema can be set.
    """
    data = recipe_to_dict(recipe)
    source = f"{recipe.name} with --set"
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BackboneSwapError(f"--set {assignment!r} is not KEY=VALUE",
                                    "Write it like --set stages.stage2.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise BackboneSwapError(f"--set {key}: the value {text!r} is not valid YAML",
                                    "Quote strings with spaces or colons") from None
        parts = _override_path(key)
        parent: dict[str, Any] = data
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            # The keys that may exist here: the schema's, not just what this recipe happens to hold.
            known = schemas.known_keys(Recipe, tuple(parts[:depth]))
            if part not in known:
                guess = schemas.did_you_mean(part, known, ".".join(parts[:depth]))
                raise BackboneSwapError(f"--set {key}: unknown recipe key {here}",
                                        f"{guess}Known keys here: {', '.join(known)}")
            if depth == len(parts) - 1:
                parent[part] = value
                break
            child = parent.get(part)
            if not isinstance(child, dict):
                state = "not in this recipe" if child is None else f"{schemas.show(child)}, not a mapping"
                raise BackboneSwapError(f"--set {key}: {here} is {state}",
                                        f"Set {here} as a whole, e.g. --set '{here}={{...}}'")
            parent = child
    return recipe_from_dict(data, source)
