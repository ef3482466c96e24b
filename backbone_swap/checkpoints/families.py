"""The LLM families backbone-swap knows by name: what training needs from each, keyed by ``model_type``.

Explicit entries keyed by the config's ``model_type``, never by a folder name. A family outside the registry still
trains: its LoRA targets are read from the module names of its decoder layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What backbone-swap must know about one LLM family to train and template it."""

    lora_targets: tuple[str, ...]
    notes: str = ""
    # the notes apply to the checkpoints whose vocabulary has this token (Llama 3's <|eot_id|>: a Llama 2 or a
    # Vicuna is a llama too, and has a pad token and ends turns with </s>); None: to every checkpoint of the family
    notes_when: str | None = None

    def notes_for(self, vocabulary: dict[str, int]) -> str:
        return self.notes if self.notes_when is None or self.notes_when in vocabulary else ""


_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_TARGETS, "Llama 3 has no pad token and ends turns with <|eot_id|>", "<|eot_id|>"),
    "mistral": Family(_LLAMA_TARGETS, "no pad token; [INST] template without a system role"),
    "qwen2": Family(_LLAMA_TARGETS, "ChatML template; <|im_end|> ends a turn"),
    "qwen3": Family(_LLAMA_TARGETS, "ChatML template with thinking blocks; <|im_end|> ends a turn"),
    "gemma": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role"),
    "gemma2": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role; logit soft-capping"),
    "gemma3_text": Family(_LLAMA_TARGETS, "<end_of_turn> ends a turn; no system role"),
    "phi3": Family(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), "<|end|> ends a turn"),
}


def lora_targets(family: str, language_names: Iterable[str]) -> tuple[str, ...]:
    """The family's LoRA targets, or every Linear-looking leaf of the decoder layers for an unknown one."""
    if family in FAMILIES:
        return FAMILIES[family].lora_targets
    leaves = set()
    for name in language_names:
        parts = name.split(".")
        if "layers" in parts and parts[-1] == "weight" and name.endswith("proj.weight"):
            leaves.add(parts[-2])
    return tuple(sorted(leaves))
