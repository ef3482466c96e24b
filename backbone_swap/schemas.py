"""One way to check the documents backbone-swap reads, such as training recipes and report.json.

Each document is a set of pydantic models. This module turns pydantic's complaints into problems that name
the offending key by its dotted path (``stages.stage2.lr``, ``tasks[0].overlap.both``) and say what the key
takes, in the document's voice: a person editing a YAML file gets a sentence and what to do about it
(``stages.stage2.lr must be a positive number, not -0.1``), a tool reading report.json gets one line per
problem (``tasks[0].n: expected integer, got string``).

pydantic's lax mode converts too much for files that people edit: ``true`` would pass for 1, ``8.0`` for a
batch size and ``"yes"`` for a boolean. So the building blocks here are strict, with one exception: text that
reads as a number passes for a number, because PyYAML follows YAML 1.1, where a float needs a dot, and reads
``lr: 1e-3`` as the string "1e-3". That is the natural way to write a learning rate.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from backbone_swap.errors import BackboneSwapError

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)

# The error types this module raises inside validation; everything else comes from pydantic.
_EXPECTED, _CHOICE, _RULE = "expected", "choice", "rule"
# A misspelt key is both unknown and missing: naming the unknown one first brings its "did you mean".
_FIRST = {"extra_forbidden": 0, "invalid_key": 0, "missing": 1}


class Closed(BaseModel):
    """A part of a document people write by hand: unknown keys are refused, and nothing changes once loaded.

    A misspelt key that were ignored would train with the default and look like a backbone effect later.
    Assigning raises ``AttributeError`` (``FrozenInstanceError``) as for any read-only attribute, instead of
    pydantic's ``ValidationError``, which would read as bad input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Values as written in YAML: a boolean is never a number, a float never an integer, text never a flag.
# A Number is finite. Put NUMERIC_TEXT after its bounds (Field(gt=0)): numeric text ("1e-3") is then read as
# the number first, and pydantic keeps the bounds as the float's own (the JSON Schema's minimum and maximum).
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
NUMERIC_TEXT = BeforeValidator(_number_from_text)
Integer = Annotated[int, Strict()]
Boolean = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


def expect(description: str, hint: str = "") -> WrapValidator:
    """An annotation that words every complaint pydantic has about a value as "expected <description>".

    pydantic words its errors for programmers ("Input should be a valid integer") and one per constraint; a
    document says once what a key takes ("a positive integer"). Problems found deeper (an item of a list, a
    key of a mapping) keep their own words and win over what they cause here (a list too short once its
    bad items are dropped), and so do the choices and rules of this module.
    """

    def reword(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as error:
            found = error.errors()
            if all(not e["loc"] for e in found) and any(e["type"] not in (_CHOICE, _RULE) for e in found):
                raise PydanticCustomError(_EXPECTED, "expected {expected}",
                                          {"expected": description, "hint": hint}) from None
            raise

    return WrapValidator(reword)


def one_of(choices: Sequence[str]) -> Any:
    """A ``Literal`` of ``choices`` (listed as an enum in the JSON Schema) whose problem names them all."""

    def reword(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(_CHOICE, "not one of {choices}", {"choices": list(choices)}) from None

    return Annotated[Literal[tuple(choices)], WrapValidator(reword)]


def broken(*found: tuple[str | Loc, str], hint: str = "") -> ValidationError:
    """What a document's own rules (checks across keys) found, to raise from a model's validator.

    Each finding is (key or location relative to the model, message); the location lets a rule on a
    parent name the key it is about (``stages.stage2.lora must equal ...``).
    """
    return ValidationError.from_exception_data("rules", [
        InitErrorDetails(type=PydanticCustomError(_RULE, "{message}", {"message": message, "hint": hint}),
                         loc=(where,) if isinstance(where, str) else where, input=None)
        for where, message in found
    ])


# ----------------------------------------------------------------------------------------------------
# problems


class Problem(NamedTuple):
    """One problem of a document: its path apart, for callers that group or look up problems by key."""

    path: str  # dotted: stages.stage2.lr, tasks[0].overlap.both; "" for the document itself
    text: str  # the whole problem, path included, in the document's voice
    hint: str  # what to do about it; empty where the voice has no hints


@dataclasses.dataclass(frozen=True)
class Voice:
    """How a document's problems read. The defaults suit YAML files that people edit.

    Placeholders: {path}; {key}, the path without list indices at its end (what a command line can set);
    {shown}, the value as written in YAML; {kind}, its JSON type; {expected}; {choices} and {quoted}, the
    choices bare and quoted; {message}, a rule's own words; {document}.
    """

    document: str = "file"  # names the document in hints: "Add lr to stages.stage2 of the recipe"
    fix: str = "Fix {path} in the {document}"  # the hint where nothing more specific applies
    expected: str = "{path} must be {expected}, not {shown}"
    choice: str = "{path} must be one of {choices}, not {shown}"
    missing: str = "{path} is missing"
    unknown: str = "unknown key {path}"
    rule: str = "{path} {message}"
    mapping: str = "a mapping of settings"  # what a model takes; {model} is its class name in lower case
    root: str = ""  # the path of the document itself


def dotted(loc: Loc) -> str:
    """``("tasks", 0, "overlap")`` as ``tasks[0].overlap``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, list | tuple):
        text = f"a list {json.dumps(list(value), default=str)}"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_type(value: Any) -> str:
    """The JSON name of a value's type: null, boolean, string, integer, number, list, object."""
    if value is None:
        return "null"
    names = {bool: "boolean", str: "string", int: "integer", float: "number", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def known_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the mapping at ``loc`` of a ``model`` document may hold, in order.

    Read from the model's JSON Schema, which describes the document as written (a recipe's stages by
    name), so that suggestions and the schema tools see cannot disagree.
    """
    schema = _json_schema(model)
    node: Mapping[str, Any] = schema
    for part in (*loc, None):
        while "$ref" in node or "anyOf" in node or "allOf" in node:  # allOf: a $ref with a default, before 2.9
            node = (schema["$defs"][node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node
                    else next((n for n in node.get("anyOf", node.get("allOf")) if n.get("type") != "null"), {}))
        if part is None:
            break
        node = node.get("properties", {}).get(part, {}) if isinstance(part, str) else node.get("items", {})
    return list(node.get("properties", {}))


def did_you_mean(name: str, known: Sequence[str], parent: str = "") -> str:
    """The start of a hint for a misspelt key close to a known one ("Did you mean stages.stage2.lr? "), or ""."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"Did you mean {dotted((parent, close[0]) if parent else (close[0],))}? " if close else ""


def _problem(error: ErrorDetails, model: type[BaseModel], voice: Voice) -> Problem:
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    path = dotted(loc)
    key = dotted(loc[: max((i + 1 for i, part in enumerate(loc) if isinstance(part, str)), default=0)])
    words = {"path": path or voice.root, "key": key, "document": voice.document, "shown": show(error["input"]),
             "kind": json_type(error["input"])}
    hint = ctx.get("hint") or voice.fix.format(**words)
    if kind == "missing":
        template, parent = voice.missing, dotted(loc[:-1])
        hint = f"Add {loc[-1]} to {parent or 'the top level'} of the {voice.document}"
    elif kind in ("extra_forbidden", "invalid_key"):  # a key not in the model, or not even a string
        template, parent = voice.unknown, dotted(loc[:-1])
        known = known_keys(model, loc[:-1])
        hint = f"{did_you_mean(str(loc[-1]), known, parent)}Known keys{' under ' + parent if parent else ''}: " \
               f"{', '.join(known)}"
    elif kind == "model_type":
        template, words["expected"] = voice.expected, voice.mapping.format(model=ctx.get("class_name", "").lower())
        hint = f"Write it as indented `name: value` lines, as in the shipped {voice.document}s"
    elif kind == _EXPECTED:
        template, words["expected"] = voice.expected, ctx["expected"]
    elif kind == _CHOICE:
        template = voice.choice
        words.update(choices=", ".join(ctx["choices"]), quoted=", ".join(map(repr, ctx["choices"])))
    else:  # a rule of the document, or a pydantic check without expect() around it
        template, words["message"] = voice.rule, ctx.get("message", error["msg"])
    return Problem(path, template.format(**words).strip(), hint)


def problems(model: type[BaseModel], data: Any, voice: Voice = Voice()) -> list[Problem]:
    """Every problem of ``data`` as a ``model`` document, in the order pydantic finds them; [] when valid."""
    try:
        model.model_validate(data)
    except ValidationError as error:
        return [_problem(e, model, voice) for e in error.errors(include_url=False)]
    return []


def validate(model: type[ModelT], data: Any, prefix: str, voice: Voice = Voice()) -> ModelT:
    """``data`` as a ``model``, or a ``BackboneSwapError`` for its first problem: "<prefix>: <problem>".

    ``prefix`` names the document (``recipe tiny-cpu.yaml``, ``suite x.yaml``). One problem, not all: the
    first fix often settles the rest, and a list of ten would bury it.
    """
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = min(error.errors(include_url=False), key=lambda e: _FIRST.get(e["type"], len(_FIRST)))
        problem = _problem(first, model, voice)
        raise BackboneSwapError(f"{prefix}: {problem.text}", problem.hint) from None


# ----------------------------------------------------------------------------------------------------
# YAML


def _check_unique_keys(text: str, prefix: str) -> None:
    """Reject a key written twice in one mapping: YAML keeps the last silently, which hides edits."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    pending = [(node, "")]
    while pending:
        current, key = pending.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                name = str(key_node.value)
                path = f"{key}.{name}" if key else name
                if name in seen:
                    raise BackboneSwapError(f"{prefix}: {path} is given twice",
                                            f"Keep one {path} (line {key_node.start_mark.line + 1})")
                seen.add(name)
                pending.append((value_node, path))
        elif isinstance(current, yaml.SequenceNode):
            pending.extend((item, key) for item in current.value)


def parse_yaml(text: str, prefix: str) -> Any:
    """A YAML document people write (``prefix`` names it: ``recipe x.yaml``), with a key given twice refused and
    a syntax error placed on its line."""
    try:
        _check_unique_keys(text, prefix)
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise BackboneSwapError(f"{prefix} is not valid YAML{where}: {problem}",
                                "Check the indentation and the `key: value` syntax there") from None
