"""The training recipe as typed data: frozen dataclasses, loaded from YAML and validated key by key.

A recipe is everything that decides *how* a transplanted VLM is trained, and nothing about *what* it is
trained on: data paths, model paths and output folders are never part of it. That is what makes its hash
meaningful: two runs with the same recipe hash used the same settings, so a resumed run or a comparison
can check it instead of trusting file names.

Why a hand-written validator rather than a schema library: the errors are for people editing a YAML file
or typing ``--set``, so each one names the dotted key (``stages.stage2.lr``) and the file, says what was
expected and what was found, and suggests the fix. Everything not listed here is rejected, because a
misspelt key that is silently ignored trains with the default and looks like a backbone effect later.

No torch here: the recipe is loaded (and its mistakes reported) before any heavy import.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import yaml

from backbone_swap.errors import BackboneSwapError

SHIPPED_PACKAGE = "backbone_swap.recipes"
STAGE_NAMES: tuple[str, ...] = ("stage1", "stage2")  # also their order: stage 1 aligns, stage 2 tunes
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")
IMAGE_ASPECTS: tuple[str, ...] = ("pad", "resize")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant")
LORA_BIASES: tuple[str, ...] = ("none", "all", "lora_only")  # peft's LoraConfig.bias values
FAMILY_TARGETS = "family"

# LoRA target names end up inside a regular expression (train.lora_target_regex), so they must be plain
# module names: anything else would silently match other layers, or nothing.
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter on the language model (never on the vision tower or the projector)."""

    r: int
    alpha: int
    dropout: float
    bias: str = "none"
    # "family": the LLM family's registry targets (backbone_swap.checkpoints.anatomy.FAMILIES), resolved at training
    # time because the recipe is written before the new LLM is chosen; or an explicit tuple of module names.
    targets: tuple[str, ...] | str = FAMILY_TARGETS


@dataclass(frozen=True)
class Stage:
    """One training stage; the vision tower is always frozen, so it is not a setting."""

    name: str  # "stage1" / "stage2": the YAML key, and the stage's folder in the run directory
    train_projector: bool
    lora: LoraSettings | None  # None: the language model stays frozen in this stage
    epochs: float
    max_steps: int | None  # optional cap on optimizer steps, for tiny runs
    lr: float  # the LoRA learning rate; the projector's too unless projector_lr is set
    projector_lr: float | None  # None: same as lr
    global_batch: int  # samples per optimizer step, whatever the number of devices
    micro_batch: int  # samples per device per forward pass
    warmup_ratio: float
    scheduler: str
    weight_decay: float
    max_grad_norm: float | None  # None: no clipping

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps that keep ``global_batch`` fixed on ``world_size`` devices.

        The global batch is the recipe's promise (LLaVA-1.5's 256 / 128); the device count is the user's
        machine. So the count of devices changes the accumulation, never the number of samples per step.
        """
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise BackboneSwapError(f"the number of devices must be a positive integer, not {_show(world_size)}")
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


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a VLM is trained; paths to data and models are deliberately absent."""

    name: str
    description: str
    seed: int
    max_length: int  # tokens per sample, prompt and image tokens included
    precision: str
    gradient_checkpointing: bool
    image_aspect: str  # "pad": pad to square with the mean colour (LLaVA-1.5); "resize": stretch
    group_by_length: bool
    stages: tuple[Stage, ...]  # in STAGE_NAMES order


# ----------------------------------------------------------------------------------------------------
# validation


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, list | tuple):
        text = f"a list {json.dumps(list(value), default=str)}"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    """Reads one recipe mapping, failing with the source and dotted key of the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, hint: str = "") -> NoReturn:
        where = f"{key} " if key else ""
        raise BackboneSwapError(f"recipe {self.source}: {where}{problem}",
                                hint or f"Fix {key or 'it'} in the recipe, or override it with --set {key}=VALUE")

    def mapping(self, value: Any, key: str, required: Iterable[str], optional: Iterable[str]) -> dict[str, Any]:
        """``value`` as a dict with only known keys and every required one."""
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping of settings, not {_show(value)}",
                      "Write it as indented `name: value` lines, as in the shipped recipes")
        required, optional = list(required), list(optional)
        known = required + optional
        for name in value:
            if name not in known:
                dotted = _join(key, str(name))
                close = difflib.get_close_matches(str(name), known, n=1)
                guess = f"Did you mean {_join(key, close[0])}? " if close else ""
                self.fail("", f"unknown key {dotted}", f"{guess}Known keys{' under ' + key if key else ''}: "
                                                       f"{', '.join(known)}")
        for name in required:
            if name not in value:
                self.fail(_join(key, name), "is missing", f"Add {name} to {key or 'the top level'} of the recipe")
        return dict(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, not {_show(value)}")
        return value

    def integer(self, value: Any, key: str, minimum: int, nullable: bool = False) -> int | None:
        if value is None and nullable:
            return None
        # bool is an int subclass in Python, but `micro_batch: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer{' or null' if nullable else ''}, not {_show(value)}")
        if value < minimum:
            words = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
            self.fail(key, f"must be {words}, not {_show(value)}")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False, below_one: bool = False,
               nullable: bool = False) -> float | None:
        """A finite float; ints are fine, and so are numeric strings.

        Strings because PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-3`` loads as the
        string "1e-3" while ``lr: 1.0e-3`` loads as a float. Learning rates are naturally written the
        first way, so rejecting them would punish the obvious spelling.
        """
        if value is None and nullable:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            self.fail(key, f"must be a number{' or null' if nullable else ''}, not {_show(value)}")
        if positive and number <= 0:
            self.fail(key, f"must be a positive number, not {_show(value)}")
        if not positive and number < 0:
            self.fail(key, f"must be a non-negative number, not {_show(value)}")
        if below_one and number >= 1:
            self.fail(key, f"must be at least 0 and below 1, not {_show(value)}")
        return number

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {_show(value)}")
        return value

    def text(self, value: Any, key: str, allow_empty: bool = True) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            self.fail(key, f"must be a{'' if allow_empty else ' non-empty'} string, not {_show(value)}")
        return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_LORA_REQUIRED = ("r", "alpha", "dropout")
_LORA_OPTIONAL = ("bias", "targets")
_STAGE_REQUIRED = ("train_projector", "epochs", "lr", "global_batch", "micro_batch", "warmup_ratio", "scheduler",
                   "weight_decay")
_STAGE_OPTIONAL = ("lora", "max_steps", "projector_lr", "max_grad_norm")
_RECIPE_REQUIRED = ("seed", "max_length", "precision", "gradient_checkpointing", "image_aspect", "group_by_length",
                    "stages")
_RECIPE_OPTIONAL = ("name", "description")


def _lora(check: _Checker, value: Any, key: str) -> LoraSettings:
    data = check.mapping(value, key, _LORA_REQUIRED, _LORA_OPTIONAL)
    targets: Any = data.get("targets", FAMILY_TARGETS)
    if isinstance(targets, list | tuple):
        if not targets:
            check.fail(f"{key}.targets", "is an empty list", f"List module names, or write `targets: {FAMILY_TARGETS}`")
        for target in targets:
            if not isinstance(target, str) or not _MODULE_NAME.fullmatch(target):
                check.fail(f"{key}.targets", f"must list plain module names such as q_proj, not {_show(target)}")
        targets = tuple(targets)
    elif targets != FAMILY_TARGETS:
        check.fail(f"{key}.targets", f"must be {FAMILY_TARGETS!r} or a list of module names, not {_show(targets)}",
                   f"`targets: {FAMILY_TARGETS}` uses the new LLM family's registry; or write a list: [q_proj, v_proj]")
    return LoraSettings(
        r=check.integer(data["r"], f"{key}.r", 1),
        alpha=check.integer(data["alpha"], f"{key}.alpha", 1),
        dropout=check.number(data["dropout"], f"{key}.dropout", below_one=True),
        bias=check.choice(data.get("bias", "none"), f"{key}.bias", LORA_BIASES),
        targets=targets,
    )


def _stage(check: _Checker, name: str, value: Any) -> Stage:
    key = f"stages.{name}"
    data = check.mapping(value, key, _STAGE_REQUIRED, _STAGE_OPTIONAL)
    lora = data.get("lora")
    stage = Stage(
        name=name,
        train_projector=check.boolean(data["train_projector"], f"{key}.train_projector"),
        lora=None if lora is None else _lora(check, lora, f"{key}.lora"),
        epochs=check.number(data["epochs"], f"{key}.epochs", positive=True),
        max_steps=check.integer(data.get("max_steps"), f"{key}.max_steps", 1, nullable=True),
        lr=check.number(data["lr"], f"{key}.lr", positive=True),
        projector_lr=check.number(data.get("projector_lr"), f"{key}.projector_lr", positive=True, nullable=True),
        global_batch=check.integer(data["global_batch"], f"{key}.global_batch", 1),
        micro_batch=check.integer(data["micro_batch"], f"{key}.micro_batch", 1),
        warmup_ratio=check.number(data["warmup_ratio"], f"{key}.warmup_ratio", below_one=True),
        scheduler=check.choice(data["scheduler"], f"{key}.scheduler", SCHEDULERS),
        weight_decay=check.number(data["weight_decay"], f"{key}.weight_decay"),
        max_grad_norm=check.number(data.get("max_grad_norm"), f"{key}.max_grad_norm", positive=True, nullable=True),
    )
    if stage.global_batch % stage.micro_batch:
        check.fail(f"{key}.global_batch",
                   f"({stage.global_batch}) must be a multiple of {key}.micro_batch ({stage.micro_batch})",
                   "Each optimizer step accumulates whole micro batches; change one of the two")
    if not stage.train_projector and stage.lora is None:
        check.fail(key, "trains nothing", f"Set {key}.train_projector: true or give {key}.lora settings")
    return stage


def recipe_from_dict(data: Mapping[str, Any], source: str) -> Recipe:
    """Validate a parsed recipe (as from YAML) into a ``Recipe``; ``source`` names it in errors.

    Every key is checked, unknown ones included; the first problem raises a ``BackboneSwapError`` naming
    its dotted key. ``name`` defaults to the source's file stem and ``description`` to "".
    """
    check = _Checker(source)
    top = check.mapping(data, "", _RECIPE_REQUIRED, _RECIPE_OPTIONAL)
    stages_data = check.mapping(top["stages"], "stages", (), STAGE_NAMES)
    if not stages_data:
        check.fail("stages", "has no stage", f"Give one or both of {', '.join(STAGE_NAMES)}")
    # Canonical order, whatever the file's order: stage 1 (alignment) always runs before stage 2.
    stages = tuple(_stage(check, name, stages_data[name]) for name in STAGE_NAMES if name in stages_data)
    adapters = {stage.lora for stage in stages if stage.lora is not None}
    if len(adapters) > 1:
        # One adapter is created and carried from stage to stage; two settings would mean one is ignored.
        check.fail(f"stages.{stages[-1].name}.lora", f"must equal stages.{stages[0].name}.lora",
                   "Both stages train the same LoRA adapter; give them the same settings or drop one")
    return Recipe(
        name=check.text(top.get("name", Path(source).stem), "name", allow_empty=False),
        description=check.text(top.get("description", ""), "description"),
        seed=check.integer(top["seed"], "seed", 0),
        max_length=check.integer(top["max_length"], "max_length", 1),
        precision=check.choice(top["precision"], "precision", PRECISIONS),
        gradient_checkpointing=check.boolean(top["gradient_checkpointing"], "gradient_checkpointing"),
        image_aspect=check.choice(top["image_aspect"], "image_aspect", IMAGE_ASPECTS),
        group_by_length=check.boolean(top["group_by_length"], "group_by_length"),
        stages=stages,
    )


# ----------------------------------------------------------------------------------------------------
# serialising and hashing


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain YAML/JSON data, every key present; ``recipe_from_dict`` gives it back equal."""
    out = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe) if f.name != "stages"}
    stages: dict[str, Any] = {}
    for stage in recipe.stages:
        entry = {f.name: getattr(stage, f.name) for f in dataclasses.fields(stage) if f.name != "name"}
        if stage.lora is not None:
            lora = dataclasses.asdict(stage.lora)
            lora["targets"] = stage.lora.targets if isinstance(stage.lora.targets, str) else list(stage.lora.targets)
            entry["lora"] = lora
        stages[stage.name] = entry
    out["stages"] = stages
    return out


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


def _check_unique_keys(text: str, source: str) -> None:
    """Reject a key written twice in one mapping: YAML keeps the last silently, which hides edits."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    pending = [(node, "")]
    while pending:
        current, key = pending.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                name = str(key_node.value)
                dotted = _join(key, name)
                if name in seen:
                    raise BackboneSwapError(f"recipe {source}: {dotted} is given twice",
                                            f"Keep one {dotted} (line {key_node.start_mark.line + 1})")
                seen.add(name)
                pending.append((value_node, dotted))
        elif isinstance(current, yaml.SequenceNode):
            pending.extend((item, key) for item in current.value)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        _check_unique_keys(text, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise BackboneSwapError(f"recipe {source} is not valid YAML{where}: {problem}",
                                "Check the indentation and the `key: value` syntax there") from None


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
    data = _parse_yaml(text, source)
    if data is None:
        raise BackboneSwapError(f"recipe {source} is empty", "Start from a shipped recipe, e.g. llava15-lora")
    if not isinstance(data, Mapping):
        raise BackboneSwapError(f"recipe {source} must be a mapping of settings, not {_show(data)}",
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
    schema_stage = {"lora": _LORA_REQUIRED + _LORA_OPTIONAL}
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
        # The keys that may exist at each depth: the schema, not just what this recipe happens to hold.
        known: tuple[str, ...] = _RECIPE_REQUIRED + _RECIPE_OPTIONAL
        parent: dict[str, Any] = data
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            if part not in known:
                close = difflib.get_close_matches(part, known, n=1)
                guess = f"Did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
                raise BackboneSwapError(f"--set {key}: unknown recipe key {here}",
                                        f"{guess}Known keys here: {', '.join(known)}")
            if depth == len(parts) - 1:
                parent[part] = value
                break
            child = parent.get(part)
            if not isinstance(child, dict):
                state = "not in this recipe" if child is None else f"{_show(child)}, not a mapping"
                raise BackboneSwapError(f"--set {key}: {here} is {state}",
                                        f"Set {here} as a whole, e.g. --set '{here}={{...}}'")
            parent = child
            if depth == 0:
                known = STAGE_NAMES if part == "stages" else ()
            elif depth == 1 and parts[0] == "stages":
                known = _STAGE_REQUIRED + _STAGE_OPTIONAL
            else:
                known = schema_stage.get(part, ())
    return recipe_from_dict(data, source)
