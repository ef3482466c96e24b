"""The human-readable form of ``backbone-swap inspect`` (the ``--json`` form is the same data)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def anatomy_table(a: dict[str, Any]) -> Table:
    table = Table(title=a["path"], show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    family = a["family"] + ("" if a["family_known"] else " (not in the registry)")
    table.add_row("kind", f"{a['kind'].upper()} ({a['architecture']}, model_type {a['model_type']})")
    if a.get("vlm_format"):
        table.add_row("format", a["vlm_format"])
        for key, value in (a.get("settings") or {}).items():
            table.add_row(key, str(value))
    table.add_row("LLM family", family)
    table.add_row("hidden size", str(a["hidden_size"]))
    tie = "tied" if a["tie_word_embeddings"] else "untied"
    table.add_row("vocabulary", f"{a['vocab_size']} rows, {tie} input/output embeddings")
    if a["vision"]:
        v = a["vision"]
        table.add_row(
            "vision tower",
            f"{v['model_type']}, hidden {v['hidden_size']}, image {v['image_size']}px, patch {v['patch_size']}, "
            f"{v['num_layers']} layers; features from layer {v['feature_layer']} ({v['select_strategy']})",
        )
    elif a["kind"] == "vlm":
        table.add_row("vision tower", "not in this folder (pass --vision-tower)")
    if a["projector"]:
        p = a["projector"]
        table.add_row("projector", f"{p['in_features']} -> {p['out_features']} -> {p['out_features']} "
                      f"({p['type']}, {p['activation']}, bias {p['bias']})")
        table.add_row("image token", f"{a['image_token']!r} (id {a['image_token_id']})")
    table.add_row("chat template", "yes" if a["chat_template"] else "no")
    table.add_row("pad token", repr(a["pad_token"]) if a["pad_token"] else "none")
    table.add_row("end of sequence", repr(a["eos_token"]))
    params = ", ".join(f"{k} {_count(v)}" for k, v in a["parameters"].items())
    table.add_row("parameters", params)
    table.add_row("dtype", ", ".join(f"{k} {v}" for k, v in a["dtypes"].items()))
    table.add_row("weights", f"{a['weight_files']} {a['weight_format']} file(s), {_count(a['weight_bytes'])} bytes")
    table.add_row("LoRA targets", ", ".join(a["lora_targets"]) or "none found")
    for note in a["notes"]:
        table.add_row("note", note)
    return table


def print_inspection(result: dict[str, Any]) -> None:
    console = Console()
    if "transplant" not in result:
        console.print(anatomy_table(result))
        return
    console.print(anatomy_table(result["model"]))
    console.print(anatomy_table(result["llm"]))
    t = result["transplant"]
    table = Table(title="transplant", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    verdict = "no, " + "; ".join(t["problems"]) if t["problems"] else "yes"
    table.add_row("possible", verdict)
    table.add_row("new projector", f"{t['projector_in']} -> {t['projector_out']} -> {t['projector_out']}")
    table.add_row("reuse old projector", "possible" if t["reuse_projector_possible"] else "no (hidden sizes differ)")
    table.add_row("tokens to add", ", ".join(t["add_tokens"]) or "none")
    table.add_row("embedding rows", f"{t['embedding_rows'][0]} -> {t['embedding_rows'][1]}")
    table.add_row("chat template", t["chat_template"])
    for note in t["notes"]:
        table.add_row("note", note)
    console.print(table)
