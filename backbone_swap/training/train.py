"""The fixed recipe applied to a (transplanted) VLM: stage 1 trains the projector, stage 2 the projector and
LoRA on the language model; the vision tower never trains.

Built on accelerate (devices, mixed precision, multi-process) and peft (LoRA). The frozen tower runs once
per image through the feature cache; training feeds the cached features through the projector into the
language model, which is exactly what ``LlavaForConditionalGeneration`` computes from pixels. Each stage
checkpoints its trainable weights, optimizer, scheduler and random state, so an interrupted run resumes
to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import io
import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints.streaming import TORCH_DTYPES, sha256_file
from backbone_swap.errors import BackboneSwapError
from backbone_swap.runs import (
    TRAINING,
    RunFolder,
    free_bytes,
    staged_dir,
    step_record,
    write_bytes,
    write_json,
    write_safetensors,
)
from backbone_swap.training.batching import MicroBatchSampler, micro_batches, steps_per_epoch
from backbone_swap.training.data import Dataset, build_dataset
from backbone_swap.training.recipe import Recipe, Stage, recipe_hash, recipe_to_dict
from backbone_swap.training.schemes import TrainingScheme

PROJECTOR = "multi_modal_projector"


@dataclass
class StepInfo:
    """What a callback sees after every optimizer step."""

    stage: str
    step: int
    total_steps: int
    loss: float
    lr: float
    samples_per_second: float
    model: Any = None  # the module being trained (LoRA not merged), for callbacks that inspect weights


@dataclass
class TrainResult:
    output: Path
    manifest: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


class CachedFeatureVLM:
    """Builds the module accelerate prepares: the VLM fed with cached vision features instead of pixels."""

    @staticmethod
    def make(model):
        import torch

        class _Module(torch.nn.Module):
            def __init__(self, vlm):
                super().__init__()
                self.vlm = vlm
                # the decoder and encoder layer classes that occur in this model: FSDP makes each one a unit
                # of its own (the class lists a CLIP text part that a LLaVA tower does not have)
                present = {type(m).__name__ for m in vlm.modules()}
                self._no_split_modules = sorted(set(getattr(vlm, "_no_split_modules", None) or []) & present)

            # FSDP gives the (large) embedding and output layers units of their own when it can find them
            def get_input_embeddings(self):
                return self.vlm.get_input_embeddings()

            def get_output_embeddings(self):
                return self.vlm.get_output_embeddings()

            def forward(self, input_ids, attention_mask, labels, features):
                vlm = self.vlm
                embeds = vlm.get_input_embeddings()(input_ids)
                projector = vlm.model.multi_modal_projector
                if features is not None:
                    projected = projector(features.to(embeds.dtype))
                    mask = (input_ids == vlm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
                    embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype))
                out = vlm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)
                if features is None:
                    # a text-only batch never reaches the projector: keep its weights in the graph with a zero
                    # term, or a projector-only stage would have nothing to differentiate, and processes with
                    # and without images would disagree on which gradients to exchange (DDP and FSDP hang).
                    # It runs here, inside the forward, where sharded weights are gathered.
                    width = _projector_input_width(projector)
                    probe = projector(embeds.new_zeros((1, 1, width)))
                    out.loss = out.loss + 0.0 * probe.sum()
                return out

        return _Module(model)


def _projector_input_width(projector) -> int:
    """The vision feature width the projector takes (its first Linear's input), under peft's wrapper too."""
    import torch

    for module in projector.modules():
        if isinstance(module, torch.nn.Linear):
            return module.in_features
    raise BackboneSwapError("the projector has no Linear layer", "Train a LLaVA checkpoint with an MLP projector")


def decay_groups(params: list, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups that decay matrices only: biases and other vectors keep weight decay 0, as LLaVA's
    training code and the Hugging Face Trainer do. It matters once a recipe sets a decay (Prismatic's 0.1)."""
    matrices, vectors = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    return [group for group in ({"params": matrices, "lr": lr, "weight_decay": weight_decay},
                                {"params": vectors, "lr": lr, "weight_decay": 0.0}) if group["params"]]


def lora_target_regex(model, recipe_targets: tuple[str, ...] | str) -> str:
    """A peft target regex on the language model's Linear layers only (never the tower or projector)."""
    from backbone_swap.checkpoints.families import FAMILIES, lora_targets

    family = model.config.text_config.model_type
    if isinstance(recipe_targets, str):
        names = [n for n, _ in model.named_parameters() if ".language_model." in n]
        leaves = FAMILIES[family].lora_targets if family in FAMILIES else lora_targets(family, names)
    else:
        leaves = tuple(recipe_targets)
    if not leaves:
        raise BackboneSwapError(f"no LoRA target modules found for the {family} language model",
                                "List them in the recipe under lora.targets")
    return r".*\.language_model\..*\.(" + "|".join(leaves) + r")$"


def _load_trainable(module, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(path)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


class Trainer:
    """One training run: a VLM folder, a recipe and a data set, written to ``output``."""

    def __init__(self, scheme: TrainingScheme, model_dir: Path, recipe: Recipe, dataset: Dataset, processor,
                 output: Path, *, features: Callable[[Path], Any], save_every: int | None,
                 callbacks: list[Callable[[StepInfo], None]], show_progress: bool) -> None:
        self.scheme, self.accelerator = scheme, scheme.accelerator
        self.model_dir, self.recipe, self.dataset, self.processor = model_dir, recipe, dataset, processor
        self.output, self.features = output, features
        self.save_every, self.callbacks, self.show_progress = save_every, callbacks, show_progress
        self.history: list[dict[str, Any]] = []

    def run(self) -> Any:
        """Train every stage; returns the trained module, whole (not sharded), on the main process.

        Under FSDP or ZeRO-3 preparing a module replaces its weights with per-process slices (and a DeepSpeed
        engine leaves hooks on them), so each later stage, and the export, start from a fresh copy of the
        checkpoint with the earlier stages' trained weights loaded, as a resumed run does. Other processes
        then return None.
        """
        sharded = self.scheme.consumes_module
        self.model = self._load_base()
        self._sharded = False  # whether self.model has been consumed by a sharded stage
        for index, stage in enumerate(self.recipe.stages):
            if self._sharded:
                self._rebuild(index)
            trained = self._run_stage(index, stage)
            self._sharded = sharded and trained
        if self._sharded:
            if not self.accelerator.is_main_process:
                self.model = None
                return None
            self._rebuild(len(self.recipe.stages))
        return self.model

    def _load_base(self):
        import torch
        from transformers import LlavaForConditionalGeneration

        from backbone_swap.training.schemes import loading_whole

        recipe = self.recipe
        torch.manual_seed(recipe.seed)
        with loading_whole(self.accelerator):
            model = LlavaForConditionalGeneration.from_pretrained(self.model_dir, dtype=_dtype(recipe.precision))
        model.config.use_cache = False
        for p in model.parameters():
            p.requires_grad_(False)
        if recipe.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return model

    def _rebuild(self, stages: int) -> None:
        """A whole model again: the checkpoint, then the first ``stages`` stages' trained weights."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.model = self._load_base()
        for index, stage in enumerate(self.recipe.stages[:stages]):
            torch.manual_seed(self.recipe.seed + 1000 * index)
            vlm, _ = self._prepare_stage(stage)
            _load_trainable(CachedFeatureVLM.make(vlm), self.output / stage.name / "trainable.safetensors")
        self._sharded = False

    # -- one stage --------------------------------------------------------------------------------
    def _prepare_stage(self, stage: Stage):
        import torch
        from peft import LoraConfig, get_peft_model

        model = self.model
        if stage.lora is not None and not hasattr(model, "peft_config"):
            config = LoraConfig(
                r=stage.lora.r, lora_alpha=stage.lora.alpha, lora_dropout=stage.lora.dropout, bias=stage.lora.bias,
                target_modules=lora_target_regex(model, stage.lora.targets),
                # the projector travels inside the adapter, so PeftModel.from_pretrained restores all that trained
                modules_to_save=[PROJECTOR] if stage.train_projector else None,
            )
            with warnings.catch_warnings():
                # peft probes a transformers attribute that is deprecated in favour of a new name
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, config)
            self.model = model
        vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
        projector = vlm.model.multi_modal_projector
        for name, p in projector.named_parameters():
            # under peft the projector is wrapped: its trainable copy is saved with the adapter
            p.requires_grad_(stage.train_projector and "original_module" not in name)
        for name, p in vlm.named_parameters():
            if "lora_" in name:
                p.requires_grad_(stage.lora is not None)
            if p.requires_grad:
                p.data = p.data.float()  # trainable weights in fp32; autocast handles the compute dtype
        projector_params = [p for p in projector.parameters() if p.requires_grad]
        lora_params = [p for n, p in vlm.named_parameters() if p.requires_grad and "lora_" in n]
        groups = (decay_groups(projector_params, stage.projector_lr or stage.lr, stage.weight_decay)
                  + decay_groups(lora_params, stage.lr, stage.weight_decay))
        if not groups:
            raise BackboneSwapError(f"stage {stage.name} trains nothing", "Set train_projector or lora in the recipe")
        optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
        return vlm, optimizer

    def _run_stage(self, index: int, stage: Stage) -> bool:
        """Train one stage (False: it had finished before, its weights are loaded instead)."""
        import torch
        from transformers import get_scheduler

        accelerator, scheme = self.accelerator, self.scheme
        folder = self.output / stage.name
        done = folder / "trainable.safetensors"
        # each stage starts from its own seed, so a stage redone after an interruption starts identically
        torch.manual_seed(self.recipe.seed + 1000 * index)
        random.seed(self.recipe.seed + 1000 * index)
        vlm, optimizer = self._prepare_stage(stage)
        wrapper = CachedFeatureVLM.make(vlm)
        if done.is_file() and (folder / "state.json").is_file():
            _load_trainable(wrapper, done)
            self.history += json.loads((folder / "state.json").read_text())["history"]
            return False

        world = accelerator.num_processes
        accumulation = stage.accumulation(world)
        samples = self.dataset.samples
        per_epoch = steps_per_epoch(len(samples), stage.global_batch, world)
        total = math.ceil(stage.epochs * per_epoch)
        if stage.max_steps:
            total = min(total, stage.max_steps)
        scheduler = get_scheduler(stage.scheduler if stage.scheduler != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=math.ceil(stage.warmup_ratio * total),
                                  num_training_steps=total)
        checkpoint = folder / "checkpoint"
        resuming = (checkpoint / "state.json").is_file()
        if resuming:
            # the weights go in before the module is prepared: a sharded module takes them from here
            _load_trainable(wrapper, checkpoint / "trainable.safetensors")
        model, optimizer = scheme.prepare(wrapper, optimizer, micro_batch=stage.micro_batch, accumulation=accumulation,
                                          max_grad_norm=stage.max_grad_norm)
        held = scheme.weights_held(model)

        step, history = 0, []
        if resuming:
            step, history = self._load_checkpoint(checkpoint, model, optimizer, scheduler)
        progress = _StageProgress(stage.name, total, self.show_progress and accelerator.is_main_process)
        progress.advance_to(step)
        sampler = MicroBatchSampler([s.length for s in samples], [s.image is not None for s in samples],
                                    global_batch=stage.global_batch, micro_batch=stage.micro_batch, world=world,
                                    rank=accelerator.process_index, seed=self.recipe.seed + 1000 * index,
                                    group=self.recipe.group_by_length, start=step, total=total)
        started, seen = time.perf_counter(), 0
        loss_sum = 0.0
        model.train()
        for micro in micro_batches(samples, sampler, self.features, self.processor.tokenizer.pad_token_id):
            micro = micro.to(accelerator.device)
            with scheme.micro_step(model, micro.last):
                loss = model(micro.input_ids, micro.attention_mask, micro.labels, micro.features).loss
                scheme.backward(loss, micro.parts)
            loss_sum += float(loss.detach())
            if not micro.last:
                continue
            scheme.clip(model, stage.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += micro.step_samples
            loss_value = _mean_across(accelerator, loss_sum / micro.parts)
            loss_sum = 0.0
            lr = scheduler.get_last_lr()[-1]
            rate = seen / max(time.perf_counter() - started, 1e-9)
            history.append({"stage": stage.name, "step": step, "loss": loss_value, "lr": lr})
            progress.update(step, loss_value, lr, rate)
            if self.save_every and step % self.save_every == 0 and step < total:
                self._save_checkpoint(checkpoint, model, optimizer, scheduler, step, history)
            info = StepInfo(stage.name, step, total, loss_value, lr, rate, accelerator.unwrap_model(model).vlm)
            for callback in self.callbacks:
                callback(info)
            model.train()
        progress.close()
        accelerator.wait_for_everyone()
        trained = scheme.trainable_state(model)  # every process takes part
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            write_safetensors(done, trained)
            write_json(folder / "state.json", {"steps": total, "history": history,
                                               "padding_fraction": round(sampler.padding(), 4),
                                               "accumulation": accumulation, "world_size": world,
                                               "sharding": scheme.name, "weights_held": round(held, 4)})
            shutil.rmtree(checkpoint, ignore_errors=True)
        accelerator.wait_for_everyone()
        scheme.release(model)
        self.history += history
        return True

    def _save_checkpoint(self, folder: Path, model, optimizer, scheduler, step: int, history) -> None:
        """Weights, optimizer, scheduler and random state; every process takes part (sharded weights and
        optimizer state are gathered onto the main process, which writes)."""
        import torch

        optimizer_sd = self.scheme.optimizer_state(model, optimizer)
        weights = self.scheme.trainable_state(model)
        if not self.accelerator.is_main_process:
            return
        with staged_dir(folder) as stage:
            write_safetensors(stage / "trainable.safetensors", weights)
            torch.save({"optimizer": optimizer_sd, "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       stage / "optimizer.pt")
            write_json(stage / "state.json", {"step": step, "history": history})

    def _load_checkpoint(self, folder: Path, model, optimizer, scheduler):
        """Optimizer, scheduler and random state of a checkpoint (its weights are loaded before preparing)."""
        import torch

        # our own file, written by _save_checkpoint; weights_only keeps it to tensors and plain data
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        try:
            self.scheme.load_optimizer_state(model, optimizer, state["optimizer"])
        except (ValueError, KeyError) as e:  # torch: "loaded state dict contains a parameter group that ..."
            raise BackboneSwapError(
                f"{folder} holds optimizer state for other parameter groups (written by an earlier version of "
                f"backbone-swap, or for another recipe), so this stage cannot continue from it ({e})",
                f"Delete {folder} and resume: the stage starts again from its beginning",
            ) from None
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])
        saved = json.loads((folder / "state.json").read_text())
        return saved["step"], saved["history"]


def _mean_across(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    import torch

    tensor = torch.tensor([value], device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="mean"))


class _StageProgress:
    """A rich bar with loss, learning rate and samples/s; silent when not shown."""

    def __init__(self, name: str, total: int, show: bool) -> None:
        self.bar = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from backbone_swap.progress import console

            self.bar = Progress(TextColumn(f"{name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} "
                                           "{task.fields[rate]:.1f} samples/s"),
                                TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, loss=float("nan"), lr=0.0, rate=0.0)

    def advance_to(self, step: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, loss: float, lr: float, rate: float) -> None:
        if self.bar:
            self.bar.update(self.task, completed=step, loss=loss, lr=lr, rate=rate)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def write_loss_curve(history: list[dict[str, Any]], folder: Path) -> None:
    """loss.csv and loss.png: the curve a practitioner checks first."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["stage", "step", "loss", "lr"])
    writer.writeheader()
    writer.writerows(history)
    write_bytes(folder / "loss.csv", table.getvalue().encode("utf-8"))
    from backbone_swap.verdict.plots import plot_loss

    write_bytes(folder / "loss.png", plot_loss(history))


def _restore_tower(vlm, source: Path) -> None:
    """Put the input checkpoint's own vision tower tensors back before the merged export is written.

    Training holds the tower in the recipe's precision (and the export casts to the LLM's dtype), so an fp16
    tower under a bf16 LLM would otherwise be written rounded: the tower every comparison assumes shared
    would no longer be the one transplanted."""
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.checkpoints.formats import component_of

    weights = open_checkpoint(source).weights
    stored = {name.split("vision_tower.", 1)[1]: name for name in weights.names()
              if component_of(name, "vlm") == "vision_tower"}
    for name, param in vlm.model.vision_tower.named_parameters():
        if name not in stored:
            raise BackboneSwapError(f"{source} has no vision tower weight {name}, which the trained model holds",
                                    "Train a checkpoint written by backbone-swap transplant")
        param.data = weights.read_tensor(stored[name]).to(param.device)


def export(model, processor, output: Path, *, dtype_name: str, image_aspect: str = "pad",
           tower_source: Path | None = None) -> dict[str, str]:
    """The adapter (LoRA + projector, loadable onto the input checkpoint) and the merged checkpoint, whose vision
    tower is copied from ``tower_source`` bit for bit."""
    import torch

    exported = {}
    final = output / "final"
    final.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(model, "peft_config")
    vlm = model.get_base_model() if is_peft else model
    dtype = getattr(torch, dtype_name)
    with staged_dir(final / "adapter") as stage:
        if is_peft:
            model.save_pretrained(stage)
        if not is_peft or PROJECTOR not in (model.peft_config["default"].modules_to_save or []):
            # the projector trained in stage 1 only (or a projector-only recipe): peft would not save it
            projector = {f"model.{PROJECTOR}.{n}": p.detach().to("cpu", dtype).contiguous()
                         for n, p in vlm.model.multi_modal_projector.named_parameters()
                         if "original_module" not in n}
            write_safetensors(stage / "projector.safetensors", projector)
        processor.save_pretrained(stage)
        write_json(stage / "preprocessing.json", {"image_aspect": image_aspect})
    exported["adapter"] = str(final / "adapter")
    merged = model.merge_and_unload() if is_peft else model
    merged = merged.to(dtype)
    if tower_source is not None:
        _restore_tower(merged, tower_source)
    merged.config.use_cache = True
    with staged_dir(final / "merged") as stage:
        merged.save_pretrained(stage)
        if tower_source is not None:
            # save_pretrained names the first parameter's dtype, the tower's; loading with dtype="auto" should
            # give the LLM's, as it does for the transplant
            config = json.loads((stage / "config.json").read_text())
            for part in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
                if "dtype" in part or part is config:
                    part["dtype"] = dtype_name
            write_json(stage / "config.json", config)
        processor.save_pretrained(stage)
        # how images were shaped in training, so evaluation shows the model what it learned on
        write_json(stage / "preprocessing.json", {"image_aspect": image_aspect})
    exported["merged"] = str(final / "merged")
    return exported


def check_lora_targets(recipe: Recipe, weights) -> None:
    """Refuse, before anything trains, recipe LoRA targets that name no Linear layer of the language model."""
    leaves = sorted({parts[-2] for parts in (name.split(".") for name in weights.names())
                     if "language_model" in parts and parts[-1] == "weight" and len(parts) > 2
                     and "embed" not in parts[-2] and len(weights.shape(".".join(parts))) == 2})
    for stage in recipe.stages:
        if stage.lora is None or isinstance(stage.lora.targets, str):
            continue
        missing = [t for t in stage.lora.targets if t not in leaves]
        if missing:
            raise BackboneSwapError(
                f"stages.{stage.name}.lora.targets names {', '.join(missing)}, which is no layer of the language "
                "model (LoRA never goes on lm_head, the projector or the vision tower)",
                f"Choose among {', '.join(leaves)}, or write `targets: family`",
            )


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
    unfinished stage continues from its last checkpoint (every ``save_every`` optimizer steps), ending with
    the weights of an uninterrupted run.
    """
    from backbone_swap.checkpoints.templates import end_of_turn

    started = time.time()
    model_dir, output = Path(model_dir).expanduser(), Path(output).expanduser()
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import load_processor, open_checkpoint

    ckpt = open_checkpoint(model_dir)
    anatomy = read_anatomy(ckpt)
    anatomy.require("train")
    check_lora_targets(recipe, ckpt.weights)
    data_sha = sha256_file(Path(data)) if Path(data).is_file() else None
    identity = {"model": str(model_dir.resolve()),  # the same folder however its path was written
                "data_sha256": data_sha, "recipe_hash": recipe_hash(recipe)}
    folder = RunFolder(output, TRAINING, inputs=[("model folder", model_dir)])
    previous = folder.previous()
    if previous is not None:
        if not resume:
            raise BackboneSwapError(f"{output} already holds a training run",
                                    "Pass --resume to continue it, or choose another --output")
        # runs of earlier versions recorded the recipe's hash beside the identity
        recorded = previous.get("identity") or {k: v for k, v in previous.get("inputs", {}).items()
                                                 if k in ("model", "data_sha256")}
        recorded = {"recipe_hash": previous.get("recipe_hash"), **recorded}
        folder.refuse_changed(recorded, identity, "Resume with the same model, data and recipe, or choose another "
                                                  "--output")
        if previous.get("finished"):
            return TrainResult(output, previous, previous.get("history", []))

    from backbone_swap.training.schemes import make_accelerator, training_scheme

    # one process per device under `accelerate launch`; the main one writes, the others wait for it
    accelerator = make_accelerator(recipe.precision)
    scheme = training_scheme(accelerator)
    if save_every and not scheme.saves_inside_stage:
        raise BackboneSwapError("checkpoints inside a stage (--save-every) are not supported under DeepSpeed",
                                "Leave out --save-every (upgrade: pass --save-every 0): finished stages are "
                                "still kept and resumed")
    for stage in recipe.stages:  # every stage's batch geometry on these devices, before stage 1 spends hours
        stage.accumulation(accelerator.num_processes)

    # the data are read and checked before anything is written, so a mistake in them leaves no run behind
    processor = load_processor(model_dir)
    tokenizer = processor.tokenizer
    eot = end_of_turn(tokenizer)
    if eot is None:
        raise BackboneSwapError(
            f"the chat template of {model_dir} writes no special end-of-turn token after a reply (a separator "
            "written as text, such as '</s>' for a tokenizer without that token, is not one), so the trained model "
            "would never learn to stop",
            f"Transplant again with a --chat-template that ends each reply with the tokenizer's own end-of-turn "
            f"or eos token ({tokenizer.eos_token!r})",
        )
    if tokenizer.pad_token_id is None:
        raise BackboneSwapError(
            f"the tokenizer of {model_dir} has no pad token, so samples of different lengths cannot be batched",
            "Add a dedicated pad token (not the end-of-turn token) and resize the embeddings; backbone-swap "
            "transplant does both",
        )
    # a recipe's max_length beyond the LLM's positions would train on positions it never learned
    positions = (ckpt.config.get("text_config") or {}).get("max_position_embeddings")
    max_length = min(recipe.max_length, positions) if isinstance(positions, int) and positions > 0 \
        else recipe.max_length
    dataset = build_dataset(data, tokenizer, image_root=image_root, image_token=anatomy.image_token or "<image>",
                            image_tokens=anatomy.vision.image_tokens, max_length=max_length,
                            end_of_turn=eot, on_bad_sample=on_bad_sample)
    accelerator.wait_for_everyone()  # every process has checked the output folder before anything is written
    with folder.hold(accelerator):
        if accelerator.is_main_process:
            folder.write_json("manifest.json", {"step": "train", "recipe_hash": recipe_hash(recipe),
                                                "finished": False, "identity": identity})
        show_progress = show_progress and accelerator.is_main_process

        if show_progress:
            from backbone_swap.progress import console

            summary = dataset.stats()
            console.print(f"{summary['samples']} samples ({summary['skipped']} skipped), supervised tokens per sample: "
                          f"mean {summary['supervised_tokens_mean']}, min {summary['supervised_tokens_min']}; "
                          f"end of turn {eot!r}")
            if max_length < recipe.max_length:
                console.print(f"max_length {recipe.max_length} is beyond the LLM's {positions} positions: samples are "
                              f"limited to {max_length} tokens")
        images = sorted({s.image for s in dataset.samples if s.image is not None})
        if not cache_features:
            from transformers import LlavaForConditionalGeneration

            from backbone_swap.training.features import TowerFeatures
            from backbone_swap.training.schemes import loading_whole

            with loading_whole(accelerator, every_process=True):
                tower = LlavaForConditionalGeneration.from_pretrained(
                    model_dir, dtype=_dtype(recipe.precision)).model.vision_tower.to(accelerator.device).eval()
            features = TowerFeatures(tower, processor.image_processor, image_aspect=recipe.image_aspect,
                                     layer=anatomy.vision.feature_layer, strategy=anatomy.vision.select_strategy,
                                     device=accelerator.device)
            feature_record = {"cache": None, "computed": "every step"}
        else:
            features, feature_record = _cached_features(accelerator, model_dir, processor, anatomy, recipe, images,
                                                        feature_cache, show_progress)

        # resolved: the adapter records this path as its base, which must hold from any working directory
        trainer = Trainer(scheme, model_dir.resolve(), recipe, dataset, processor, output, features=features,
                          save_every=save_every, callbacks=list(callbacks or []), show_progress=show_progress)
        model = trainer.run()
        if trainer.accelerator.is_main_process:
            dtype_name = TORCH_DTYPES.get(anatomy.dtypes.get("language_model", "F32"), "float32")
            exported = export(model, processor, output, dtype_name=dtype_name, image_aspect=recipe.image_aspect,
                              tower_source=model_dir)
            write_loss_curve(trainer.history, output)
            stages = {s.name: json.loads((output / s.name / "state.json").read_text()) for s in recipe.stages}
            final_loss = trainer.history[-1]["loss"] if trainer.history else None
            manifest = step_record(
                "train",
                inputs={"model": identity["model"], "data": str(data), "data_sha256": data_sha,
                        "image_root": str(image_root) if image_root else None},
                recipe=recipe_to_dict(recipe),
                recipe_hash=recipe_hash(recipe),
                data=dataset.stats() | {"end_of_turn": eot, "max_length": max_length},
                features=feature_record,
                stages={name: {k: v for k, v in s.items() if k != "history"} for name, s in stages.items()},
                final_loss=final_loss,
                exported=exported,
                seconds=round(time.time() - started, 3),
                identity=identity,
                finished=True,
                history=trainer.history,
            )
            for export_folder in exported.values():  # each export carries its provenance when copied elsewhere
                write_json(Path(export_folder) / "manifest.json", {k: v for k, v in manifest.items() if k != "history"})
            folder.write_json("manifest.json", manifest)
        else:
            manifest = {}
        trainer.accelerator.wait_for_everyone()
        return TrainResult(output, manifest, trainer.history)


def _cached_features(accelerator, model_dir: Path, processor, anatomy, recipe: Recipe, images: list[Path],
                     feature_cache: str | Path | None, show_progress: bool):
    """The cache's reader, once the main process has computed what the cache lacked; and what that took."""
    from backbone_swap.progress import progress_bar
    from backbone_swap.training.features import FeatureCache, bytes_per_image, default_cache_dir
    from backbone_swap.training.schemes import stop_together

    # the tower computes in the recipe's precision, as it does without the cache (and in LLaVA's training)
    dtype = _dtype(recipe.precision)
    cache = FeatureCache(Path(feature_cache) if feature_cache else default_cache_dir(), model_dir,
                         processor.image_processor, image_aspect=recipe.image_aspect,
                         layer=anatomy.vision.feature_layer, strategy=anatomy.vision.select_strategy,
                         dtype=str(dtype).removeprefix("torch."))
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
        from transformers import LlavaForConditionalGeneration

        from backbone_swap.training.schemes import loading_whole

        device = accelerator.device
        with loading_whole(accelerator, every_process=True):
            tower = LlavaForConditionalGeneration.from_pretrained(
                model_dir, dtype=dtype).model.vision_tower.to(device).eval()
        bar = progress_bar("vision features", len(todo)) if show_progress else contextlib.nullcontext(lambda n: None)
        with bar as advance:
            computed = cache.fill(tower, todo, batch_size=32, device=device, on_batch=advance)
        del tower
    accelerator.wait_for_everyone()  # the main process filled the cache; everyone reads it
    # read per batch: a data set's features need not fit in memory
    return cache.load, {"cache": str(cache.folder), "computed": computed, "reused": len(images) - computed}
