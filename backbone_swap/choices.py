"""The fixed sets of values a user chooses from, in one place for the command line and the library.

The command line turns each into an enum, so Typer refuses a value outside it and ``--help`` lists it; the library
functions check the same set again, since a notebook calls them with plain strings. Light on purpose: the command
line imports it before any command runs.
"""

from __future__ import annotations

from enum import Enum

from backbone_swap.errors import BackboneSwapError

# the dtypes a model is evaluated or written in (torch's names)
DTYPES = ("float32", "bfloat16", "float16")
# base and instruction-tuned LLMs differ in ways that look like backbone effects; only the user knows which
LLM_KINDS = ("base", "instruct", "unknown")
# a transplant's projector: a fresh one for the new hidden size, or the old one copied when its shapes fit
PROJECTORS = ("new", "reuse")
# what training does with a record it cannot use
ON_BAD_SAMPLE = ("fail", "skip")
# the old side of an upgrade: the VLM as given, or retrained from its own LLM with the same recipe
BASELINES = ("as-is", "retrain")
# the steps of an upgrade run, in order (--restart names one)
UPGRADE_STEPS = ("transplant", "baseline", "train", "eval-old", "eval-new", "compare")


def check(value: str, allowed: tuple[str, ...], option: str, hint: str = "") -> str:
    """``value`` when it is one of ``allowed``; else the refusal that names ``option`` and the choices."""
    value = value.value if isinstance(value, Enum) else value
    if value not in allowed:
        raise BackboneSwapError(f"{option} must be one of {', '.join(allowed)}, not {value!r}",
                                hint or f"Use one of {', '.join(allowed)}")
    return value


def as_enum(name: str, allowed: tuple[str, ...]) -> type[Enum]:
    """An enum of ``allowed`` for a Typer option (its values are the strings themselves)."""
    return Enum(name, [(value, value) for value in allowed], type=str)
