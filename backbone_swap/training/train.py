"""The fixed recipe applied to a (transplanted) VLM: stage 1 trains the projector, stage 2 the projector and
LoRA on the language model; the vision tower never trains.

Built on accelerate (devices, mixed precision, multi-process) and peft (LoRA). The frozen tower runs once
per image through the feature cache; training feeds the cached features through the projector into the
language model, which is exactly what ``LlavaForConditionalGeneration`` computes from pixels. ``train``
checks its inputs and prepares the data and features, the stage loop fits (``loop``), and the trained
model is exported (``export``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints.streaming import TORCH_DTYPES, sha256_file
from backbone_swap.errors import BackboneSwapError
from backbone_swap.runs import TRAINING, RunFolder, free_bytes, resolved, step_record, write_json
from backbone_swap.training.data import Dataset, build_dataset
from backbone_swap.training.export import export, write_loss_curve
from backbone_swap.training.loop import StepInfo, Trainer
from backbone_swap.training.model import check_lora_targets, load_vision_tower, precision_dtype
from backbone_swap.training.recipe import Recipe, recipe_hash, recipe_to_dict
from backbone_swap.training.schemes import TrainingScheme


@dataclass
class TrainResult:
    output: Path
    manifest: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _stops_on_full_disk(function: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """A full disk (or quota) in training or feature caching ends in one line saying what to free; what was
    saved before is kept, so the same command with --resume continues."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> TrainResult:
        try:
            return function(*args, **kwargs)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" ({e.filename})" if e.filename else ""
            raise BackboneSwapError(
                f"training stopped: no space left on the disk{where}; what was saved before is kept",
                "Free space (the feature cache can move with --feature-cache DIR, or be left out with "
                "--no-cache-features), then run the same command again with --resume",
            ) from None

    return guarded


# optimizer steps between two checkpoints inside a stage: minutes of work at LLaVA's scale, a few MB of
# trainable state each time
DEFAULT_SAVE_EVERY = 50


@_stops_on_full_disk
def train(
    model_dir: str | Path,
    *,
    recipe: Recipe,
    data: str | Path,
    image_root: str | Path | None,
    output: str | Path,
    feature_cache: str | Path | None = None,
    cache_features: bool = True,
    on_bad_sample: str = "fail",
    save_every: int | None = None,
    resume: bool = False,
    callbacks: list[Callable[[StepInfo], None]] | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``model_dir`` with ``recipe`` on ``data`` into ``output``.

    With ``cache_features`` off, the vision tower runs on every batch instead of once per image (for data
    sets whose features would not fit on disk). With ``resume``, finished stages are kept and an
    unfinished stage continues from its last checkpoint (every ``save_every`` optimizer steps: by default
    ``DEFAULT_SAVE_EVERY``, or only at the end of each stage under DeepSpeed; 0 for only there), ending with
    the weights of an uninterrupted run.
    """
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import load_processor, open_checkpoint
    from backbone_swap.training.schemes import make_accelerator, training_scheme

    started = time.time()
    model_dir, output = Path(model_dir).expanduser(), Path(output).expanduser()
    ckpt = open_checkpoint(model_dir)
    anatomy = read_anatomy(ckpt)
    anatomy.require("train")
    check_lora_targets(recipe, ckpt.weights)
    data_sha = sha256_file(Path(data)) if Path(data).is_file() else None
    identity = {"model": str(model_dir.resolve()),  # the same folder however its path was written
                "data_sha256": data_sha, "recipe_hash": recipe_hash(recipe)}
    folder = RunFolder(output, TRAINING, inputs=[("model folder", model_dir)])
    finished = _finished_run(folder, identity, resume, output)
    if finished is not None:
        return TrainResult(output, finished, finished.get("history", []))

    # one process per device under `accelerate launch`; the main one writes, the others wait for it
    scheme = training_scheme(make_accelerator(recipe.precision))
    accelerator = scheme.accelerator
    _check_geometry(recipe, scheme, save_every)
    if save_every is None:  # checkpoints inside a stage, where the scheme can keep them
        save_every = DEFAULT_SAVE_EVERY if scheme.saves_inside_stage else 0
    if accelerator.device.type == "cpu" and recipe.precision != "fp32" and accelerator.is_main_process:
        from backbone_swap.progress import say
        from backbone_swap.training.speed import check_precision

        _, warning = check_precision(recipe.precision, "cpu")
        if warning:
            say(warning)
    # the data are read and checked before anything is written, so a mistake in them leaves no run behind
    processor = load_processor(model_dir)
    eot = _end_of_turn(processor.tokenizer, model_dir)
    positions = (ckpt.config.get("text_config") or {}).get("max_position_embeddings")
    max_length = recipe.length_for(positions)
    dataset = build_dataset(data, processor.tokenizer, image_root=image_root,
                            image_token=anatomy.image_token or "<image>", image_tokens=anatomy.vision.image_tokens,
                            max_length=max_length, end_of_turn=eot, on_bad_sample=on_bad_sample)
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written
    with folder.hold(accelerator):
        if accelerator.is_main_process:
            folder.write_json("manifest.json", {"step": "train", "recipe_hash": recipe_hash(recipe),
                                                "finished": False, "identity": identity})
        show_progress = show_progress and accelerator.is_main_process
        if show_progress:
            _print_data(dataset, eot, recipe.max_length, max_length, positions)
        if cache_features:
            features, feature_record = _cached_features(accelerator, model_dir, processor, anatomy, recipe, dataset,
                                                        feature_cache, show_progress)
        else:
            features, feature_record = _tower_features(accelerator, model_dir, processor, anatomy, recipe)

        # resolved: the adapter records this path as its base, which must hold from any working directory
        trainer = Trainer(scheme, model_dir.resolve(), recipe, dataset, processor, output, features=features,
                          save_every=save_every, callbacks=list(callbacks or []), show_progress=show_progress)
        model = trainer.run()
        manifest: dict[str, Any] = {}
        if accelerator.is_main_process:
            record = {"inputs": {"model": identity["model"], "data": resolved(data), "data_sha256": data_sha,
                                 "image_root": resolved(image_root) if image_root else None},
                      "recipe": recipe_to_dict(recipe), "recipe_hash": recipe_hash(recipe),
                      "data": dataset.stats() | {"end_of_turn": eot, "max_length": max_length},
                      "features": feature_record}
            manifest = _export(model, trainer.history, processor, anatomy, recipe, model_dir, output, record,
                               identity=identity, started=started)
            folder.write_json("manifest.json", manifest)
        accelerator.wait_for_everyone()
        return TrainResult(output, manifest, trainer.history)


def _finished_run(folder: RunFolder, identity: dict[str, Any], resume: bool, output: Path) -> dict[str, Any] | None:
    """The manifest of the finished run ``output`` holds (None when there is none, or it is unfinished);
    refused without ``resume``, or when it was started with another model, data or recipe."""
    previous = folder.previous()
    if previous is None:
        return None
    if not resume:
        raise BackboneSwapError(f"{output} already holds a training run",
                                "Pass --resume to continue it, or choose another --output")
    # runs of earlier versions recorded the recipe's hash beside the identity
    recorded = previous.get("identity") or {k: v for k, v in previous.get("inputs", {}).items()
                                             if k in ("model", "data_sha256")}
    recorded = {"recipe_hash": previous.get("recipe_hash"), **recorded}
    folder.refuse_changed(recorded, identity, "Resume with the same model, data and recipe, or choose another "
                                              "--output")
    return previous if previous.get("finished") else None


def _check_geometry(recipe: Recipe, scheme: TrainingScheme, save_every: int | None) -> None:
    """Refuse what these processes cannot train, before stage 1 spends hours."""
    if save_every and not scheme.saves_inside_stage:
        raise BackboneSwapError("checkpoints inside a stage (--save-every) are not supported under DeepSpeed",
                                "Leave out --save-every or pass --save-every 0: finished stages are still kept "
                                "and resumed")
    for stage in recipe.stages:  # every stage's batch geometry on these devices
        stage.accumulation(scheme.accelerator.num_processes)


def _end_of_turn(tokenizer, model_dir: Path) -> str:
    """The special token the chat template ends each reply with; refused without one, or without a pad token."""
    from backbone_swap.checkpoints.templates import end_of_turn, no_end_of_turn

    eot = end_of_turn(tokenizer)
    if eot is None:
        raise no_end_of_turn(model_dir, tokenizer.eos_token)
    if tokenizer.pad_token_id is None:
        raise BackboneSwapError(
            f"the tokenizer of {model_dir} has no pad token, so samples of different lengths cannot be batched",
            "Add a dedicated pad token (not the end-of-turn token) and resize the embeddings; backbone-swap "
            "transplant does both",
        )
    return eot


def _print_data(dataset: Dataset, eot: str, recipe_max: int, max_length: int, positions: Any) -> None:
    from backbone_swap.progress import console

    summary = dataset.stats()
    console.print(f"{summary['samples']} samples ({summary['skipped']} skipped), supervised tokens per sample: "
                  f"mean {summary['supervised_tokens_mean']}, min {summary['supervised_tokens_min']}; "
                  f"end of turn {eot!r}")
    if max_length < recipe_max:
        console.print(f"max_length {recipe_max} is beyond the LLM's {positions} positions: samples are "
                      f"limited to {max_length} tokens")


def _export(model, history: list[dict[str, Any]], processor, anatomy, recipe: Recipe, model_dir: Path, output: Path,
            record: dict[str, Any], *, identity: dict[str, Any], started: float) -> dict[str, Any]:
    """The adapter, the merged checkpoint and the loss curve written; returns the run's manifest (``record``
    completed), which each export carries too, to keep its provenance when copied elsewhere."""
    dtype_name = TORCH_DTYPES.get(anatomy.dtypes.get("language_model", "F32"), "float32")
    exported = export(model, processor, output, dtype_name=dtype_name, image_aspect=recipe.image_aspect,
                      tower_source=model_dir)
    write_loss_curve(history, output)
    stages = {s.name: json.loads((output / s.name / "state.json").read_text()) for s in recipe.stages}
    manifest = step_record(
        "train", **record,
        stages={name: {k: v for k, v in state.items() if k != "history"} for name, state in stages.items()},
        final_loss=history[-1]["loss"] if history else None,
        exported=exported,
        seconds=round(time.time() - started, 3),
        identity=identity,
        finished=True,
        history=history,
    )
    for export_folder in exported.values():
        write_json(Path(export_folder) / "manifest.json", {k: v for k, v in manifest.items() if k != "history"})
    return manifest


def _tower_features(accelerator, model_dir: Path, processor, anatomy, recipe: Recipe):
    """The vision tower itself, run on every batch (no cache); and what the manifest records of it."""
    from backbone_swap.training.features import TowerFeatures

    tower = load_vision_tower(model_dir, recipe.precision, accelerator)
    features = TowerFeatures(tower, processor.image_processor, image_aspect=recipe.image_aspect,
                             layer=anatomy.vision.feature_layer, strategy=anatomy.vision.select_strategy,
                             device=accelerator.device)
    return features, {"cache": None, "computed": "every step"}


def _cached_features(accelerator, model_dir: Path, processor, anatomy, recipe: Recipe, dataset: Dataset,
                     feature_cache: str | Path | None, show_progress: bool):
    """The cache's reader, once the main process has computed what the cache lacked; and what that took."""
    from backbone_swap.progress import progress_bar
    from backbone_swap.training.features import FeatureCache, bytes_per_image, default_cache_dir
    from backbone_swap.training.schemes import stop_together

    # the tower computes in the recipe's precision, as it does without the cache (and in LLaVA's training)
    dtype = precision_dtype(recipe.precision)
    cache = FeatureCache(Path(feature_cache) if feature_cache else default_cache_dir(), model_dir,
                         processor.image_processor, image_aspect=recipe.image_aspect,
                         layer=anatomy.vision.feature_layer, strategy=anatomy.vision.select_strategy,
                         dtype=str(dtype).removeprefix("torch."))
    images = sorted({s.image for s in dataset.samples if s.image is not None})
    computed = 0
    todo = cache.missing(images) if images and accelerator.is_main_process else []
    refusal = None
    if todo:
        need = len(todo) * bytes_per_image(anatomy.vision.image_tokens, anatomy.vision.feature_dim, cache.dtype)
        free = free_bytes(cache.folder)
        if need > free:  # found now, not after hours of filling
            refusal = (f"the vision-feature cache needs about {need / 1e9:.1f} GB for {len(todo):,} images not cached "
                       f"yet, and {cache.folder} has {free / 1e9:.1f} GB free",
                       "Pass --feature-cache DIR on a disk with room, or --no-cache-features to run the vision tower "
                       "on every batch instead")
    stop_together(refusal, accelerator)
    if todo:
        tower = load_vision_tower(model_dir, recipe.precision, accelerator)
        bar = progress_bar("vision features", len(todo)) if show_progress else contextlib.nullcontext(lambda n: None)
        with bar as advance:
            computed = cache.fill(tower, todo, batch_size=32, device=accelerator.device, on_batch=advance)
        del tower
    accelerator.wait_for_everyone()  # the main process filled the cache; everyone reads it
    # read per batch: a data set's features need not fit in memory
    return cache.load, {"cache": resolved(cache.folder), "computed": computed, "reused": len(images) - computed}
