"""What an ``upgrade`` run will do and cost, before anything is written: its steps, the checks of both LLMs, the
memory, compute and disk it needs (from the checkpoints' shapes and a sample of the data), with warnings where a
disk lacks the room. ``--dry-run`` stops after printing it; the run records it in its manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbone_swap.choices import UPGRADE_STEPS
from backbone_swap.errors import BackboneSwapError
from backbone_swap.training import estimate
from backbone_swap.training.recipe import recipe_hash
from backbone_swap.units import fmt_bytes, fmt_duration, fmt_flop

if TYPE_CHECKING:
    from backbone_swap.upgrade import UpgradeOptions


@dataclass
class Plan:
    steps: list[str]
    lines: list[str]
    estimate: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lines": self.lines, "estimate": self.estimate}


def plan(options: UpgradeOptions) -> Plan:
    """What the run will do, with an estimate of memory and compute from the models' and data's sizes."""
    from backbone_swap.checkpoints.anatomy import compatibility, missing_tower_error, read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint

    opened = {"allow_pickle": options.allow_pickle, "trust_remote_code": options.trust_remote_code}
    old_ckpt, new_ckpt = open_checkpoint(options.vlm, **opened), open_checkpoint(options.llm, **opened)
    tower = open_checkpoint(options.vision_tower, **opened) if options.vision_tower is not None else None
    old, new = read_anatomy(old_ckpt, vision_tower=tower), read_anatomy(new_ckpt)
    if options.baseline == "as-is":  # the old VLM is evaluated as it is
        old.require("upgrade")
    else:  # only its vision side is used: transplanted onto both LLMs, each trained
        old.require("transplant")
        old.format.output.require("train", options.vlm)
    if old.vision is None:
        raise missing_tower_error(old)
    compat = compatibility(old, new, new_ckpt, template_override=options.chat_template is not None)
    if compat.problems:
        raise BackboneSwapError(compat.problems[0], "")
    if options.baseline == "retrain" and options.old_llm is not None:
        # the baseline's transplant comes later in the run: its problems are found now, before hours of training
        old_llm_ckpt = open_checkpoint(options.old_llm, **opened)
        baseline_compat = compatibility(old, read_anatomy(old_llm_ckpt), old_llm_ckpt,
                                        template_override=options.old_chat_template is not None)
        if baseline_compat.problems:
            raise BackboneSwapError(baseline_compat.problems[0].replace("--chat-template", "--old-chat-template"),
                                    "")
    recipe = options.recipe
    dataset = _check_data(options, old_ckpt, tower, old, new_ckpt, new, compat, options.chat_template,
                          "--chat-template")
    if options.baseline == "retrain" and options.old_llm is not None:
        _check_data(options, old_ckpt, tower, old, old_llm_ckpt, read_anatomy(old_llm_ckpt), baseline_compat,
                    options.old_chat_template, "--old-chat-template")
    lora = next((s.lora for s in recipe.stages if s.lora is not None), None)
    targets = tuple(new.lora_targets) if lora is None or isinstance(lora.targets, str) else tuple(lora.targets)
    shapes = estimate.shapes_of(old, new, new_ckpt, compat, targets, lora.r if lora else 0)
    from transformers import AutoTokenizer

    def measured(llm: Path, template: Path | None):
        tokenizer = AutoTokenizer.from_pretrained(llm)
        if template is not None:  # the template the transplant will write, for the tokens it adds per turn
            tokenizer.chat_template = Path(template).read_text()
        return estimate.measure_data(options.data, tokenizer, shapes.image_tokens, seed=options.seed)

    data = measured(options.llm, options.chat_template)
    records, tokens = data.records, round(data.tokens)
    trainable = shapes.projector_params + shapes.lora_params
    memory_parts = estimate.peak_memory(shapes, data, recipe, trainable=trainable)
    memory = sum(memory_parts.values())
    flops = estimate.training_flops(shapes, data, recipe, cache_features=options.cache_features)
    model_disk = estimate.model_bytes(old_ckpt, new_ckpt, shapes)
    run_disk = estimate.run_bytes(model_disk, trainable, len(recipe.stages))
    if options.baseline == "retrain" and options.old_llm is not None:
        # the baseline trains the old LLM the same way: its own shapes and tokens; memory is the larger peak
        old_llm = read_anatomy(old_llm_ckpt)
        old_targets = (tuple(old_llm.lora_targets) if lora is None or isinstance(lora.targets, str)
                       else tuple(lora.targets))
        old_shapes = estimate.shapes_of(old, old_llm, old_llm_ckpt, baseline_compat, old_targets,
                                        lora.r if lora else 0)
        old_data = measured(options.old_llm, options.old_chat_template)
        old_parts = estimate.peak_memory(old_shapes, old_data, recipe,
                                         trainable=old_shapes.projector_params + old_shapes.lora_params)
        if sum(old_parts.values()) > memory:
            memory_parts, memory = old_parts, sum(old_parts.values())
        flops += estimate.training_flops(old_shapes, old_data, recipe, cache_features=options.cache_features)
        if options.cache_features:  # the same tower on the same images: its features are in the cache already
            flops -= estimate.tower_flops(old_shapes) * old_data.distinct_images
        run_disk += estimate.run_bytes(estimate.model_bytes(old_ckpt, old_llm_ckpt, old_shapes),
                                       old_shapes.projector_params + old_shapes.lora_params, len(recipe.stages))
    disk_lines, disk = _disk(options, data, shapes, run_disk)
    disk["model_bytes"] = int(model_disk)
    steps = [s for s in UPGRADE_STEPS if s != "baseline" or options.baseline == "retrain"]
    lines = [
        f"steps: {', '.join(steps)}",
        f"transplant: {options.vlm.name}'s {old.vision.model_type if old.vision else '?'} tower onto "
        f"{options.llm.name} ({new.family}); new projector {compat.projector_in} -> {compat.projector_out}; "
        f"added tokens: {', '.join(compat.add_tokens) or 'none'}",
        "train: " + "; ".join(
            f"{s.name}: {'projector' if s.train_projector else ''}"
            f"{' + LoRA r=' + str(s.lora.r) + ' on ' + ','.join(new.lora_targets) if s.lora else ''}, "
            f"{s.epochs:g} epoch(s), lr {s.lr:g}, global batch {s.global_batch}" for s in recipe.stages),
        f"recipe {recipe.name}, hash {recipe_hash(recipe)[:16]}; vision tower frozen",
        f"baseline: {options.baseline}" + (f" (old VLM retrained from {options.old_llm})"
                                           if options.baseline == "retrain" else " (old VLM as given)"),
        f"data: {records} records, about {tokens:,} tokens (longest about {data.longest:,}); all checked: "
        f"{len(dataset.samples)} usable" + (f", {len(dataset.bad)} to be skipped" if dataset.bad else "") + "; "
        f"suite {options.suite.name}: {options.suite.names()}",
        f"estimate: about {fmt_bytes(memory)} of accelerator memory on one device without sharding ("
        + ", ".join(f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in memory_parts.items()) + "), "
        f"{fmt_flop(flops)} of training compute "
        f"({_about(fmt_duration(flops / (0.4 * 312e12)))} on one A100 at 40% of its bf16 peak)",
        *_speed_lines(recipe.precision, flops),
        *disk_lines,
    ]
    figures = {"memory_bytes": int(memory), "memory": memory_parts, "train_flops": float(flops),
               "records": records, "tokens": tokens, "longest_tokens": data.longest,
               "trainable_parameters": int(trainable), "disk": disk}
    return Plan(steps, lines, figures)


def _speed_lines(precision: str, flops: float) -> list[str]:
    """The training time at this machine's measured matrix speed in the recipe's precision (a lower bound: it
    takes every operation at the speed of a large matrix product), and the warning of a CPU slow at it."""
    import torch

    from backbone_swap.training.speed import check_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate, warning = check_precision(precision, device)
    where = torch.cuda.get_device_name() if device == "cuda" else "this machine's CPU"
    line = (f"on {where}: {fmt_flop(rate)}/s measured in {precision}, so at least "
            f"{fmt_duration(flops / rate)} on one device")
    return [line] + ([warning] if warning else [])


def _check_data(options: UpgradeOptions, vlm, tower, vlm_anatomy, llm, llm_anatomy, compat, template: Path | None,
                template_flag: str):
    """Every check ``train`` makes on the data, made now with the tokenizer and template the transplant will write:
    a missing image root, a missing or unreadable image, a bad record or a template that renders the image twice
    stops the run before anything is written, not after the transplant."""
    from backbone_swap.checkpoints.templates import no_end_of_turn
    from backbone_swap.training.data import build_dataset
    from backbone_swap.transplant import Sources, plan_tokenizer

    sources = Sources(vlm, llm, tower, vlm_anatomy, llm_anatomy, compat, options.trust_remote_code)
    text = Path(template).expanduser().read_text(encoding="utf-8") if template is not None else None
    tokens = plan_tokenizer(sources, text)
    if tokens.end_of_turn is None:
        raise no_end_of_turn(llm.path, tokens.tokenizer.eos_token, f"Pass {template_flag} FILE, a template")
    return build_dataset(options.data, tokens.tokenizer, image_root=options.image_root, image_token=sources.image_token,
                         image_tokens=vlm_anatomy.vision.image_tokens,
                         max_length=options.recipe.length_for(llm.config.get("max_position_embeddings")),
                         end_of_turn=tokens.end_of_turn, on_bad_sample=options.on_bad_sample)


def _about(amount: str) -> str:
    return amount if amount.startswith("under") else f"about {amount}"


def _disk(options: UpgradeOptions, data: estimate.DataSize, shapes: estimate.Shapes,
          run_disk: int) -> tuple[list[str], dict[str, int]]:
    """The plan's disk lines, with a warning where a folder's file system lacks the room (the run would stop
    there, hours in); the figures say what the run and the feature cache will write, and what is free."""
    from backbone_swap.runs import free_bytes, nearest_existing
    from backbone_swap.training.features import bytes_per_image, default_cache_dir

    run_free = free_bytes(options.output)
    written = sum(f.stat().st_size for f in Path(options.output).rglob("*") if f.is_file()) \
        if Path(options.output).is_dir() else 0
    to_write = max(run_disk - written, 0)  # a run started again has written part of it (and taken that room)
    figures = {"run_bytes": int(run_disk), "run_to_write": int(to_write), "run_free": int(run_free)}
    still = f"; {fmt_bytes(to_write)} still to write" if written else ""
    lines = [f"disk: about {fmt_bytes(run_disk)} in {options.output} (transplants, merged exports, checkpoints"
             f"{still}); {fmt_bytes(run_free)} free there"]
    if options.cache_features:
        cache = Path(options.feature_cache) if options.feature_cache else default_cache_dir()
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[options.recipe.precision]
        need = data.distinct_images * bytes_per_image(shapes.image_tokens, shapes.projector_in, dtype)
        cache_free = free_bytes(cache)
        figures.update(cache_bytes=int(need), cache_free=int(cache_free))
        lines.append(f"vision-feature cache: up to {fmt_bytes(need)} for {data.distinct_images:,} images in {cache} "
                     f"(images cached before are reused); {fmt_bytes(cache_free)} free there")
        same_disk = os.stat(nearest_existing(cache)).st_dev == os.stat(nearest_existing(options.output)).st_dev
        if same_disk and need + to_write > run_free:
            lines.append("warning: the run and the feature cache may need more room than their disk has (images "
                         "cached before need none); pass --feature-cache DIR on another disk, or --no-cache-features")
        elif need > cache_free:
            lines.append("warning: the feature cache may not fit on its disk; pass --feature-cache DIR on a disk with "
                         "room, or --no-cache-features (the vision tower then runs on every batch)")
    else:
        lines.append("vision-feature cache: off (the vision tower runs on every batch)")
    if to_write > run_free and not any(line.startswith("warning: the run") for line in lines):
        lines.append(f"warning: {options.output}'s disk has less room than the run writes; free space or choose "
                     "another --output")
    return lines, figures


