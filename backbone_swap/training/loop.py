"""The stages of a recipe, trained one after the other, and the checkpoints that let a stage resume.

Each stage starts from its own seed; it checkpoints its trainable weights, optimizer, scheduler and random
state every ``save_every`` steps, so an interrupted run resumes to the same weights as an uninterrupted one,
and a finished stage's weights are kept and loaded instead of trained again.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.progress import Ticker, fmt_rate, say
from backbone_swap.runs import staged_dir, write_json, write_safetensors
from backbone_swap.training.batching import MicroBatchSampler, micro_batches, steps_per_epoch
from backbone_swap.training.data import Dataset
from backbone_swap.training.model import CachedFeatureVLM, load_base_model, load_trainable, stage_trainables
from backbone_swap.training.recipe import Recipe, Stage
from backbone_swap.training.schemes import TrainingScheme


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


def stage_seed(recipe: Recipe, index: int) -> int:
    """The seed stage ``index`` starts from (LoRA's initialisation, dropout, the order of its batches).

    Each stage has its own, so a stage redone after an interruption, or rebuilt after a sharded stage,
    starts identically whatever ran before it.
    """
    return recipe.seed + 1000 * index


def total_steps(stage: Stage, samples: int, world: int) -> int:
    """The optimizer steps of ``stage``: its epochs over the data, or its ``max_steps`` when fewer."""
    total = math.ceil(stage.epochs * steps_per_epoch(samples, stage.global_batch, world))
    return min(total, stage.max_steps) if stage.max_steps else total


@dataclass
class _StageRun:
    """A stage ready to step: its prepared module and optimizer, its schedule, and where it stands."""

    stage: Stage
    model: Any
    optimizer: Any
    scheduler: Any
    sampler: MicroBatchSampler
    history: list[dict[str, Any]]
    accumulation: int
    held: float

    @property
    def total(self) -> int:
        return self.sampler.total


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
        self.model = load_base_model(self.model_dir, self.recipe, self.accelerator)
        consumed = False  # whether self.model has been consumed by a stage
        for index, stage in enumerate(self.recipe.stages):
            if consumed:
                self._rebuild(index)
            trained = self._run_stage(index, stage)
            consumed = self.scheme.consumes_module and trained
        if consumed:
            if not self.accelerator.is_main_process:
                self.model = None
                return None
            self._rebuild(len(self.recipe.stages))
        return self.model

    def _rebuild(self, stages: int) -> None:
        """A whole model again: the checkpoint, then the first ``stages`` stages' trained weights."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.model = load_base_model(self.model_dir, self.recipe, self.accelerator)
        for index, stage in enumerate(self.recipe.stages[:stages]):
            torch.manual_seed(stage_seed(self.recipe, index))
            self.model, vlm, _ = stage_trainables(self.model, stage)
            load_trainable(CachedFeatureVLM.make(vlm), self.output / stage.name / "trainable.safetensors")

    # -- one stage --------------------------------------------------------------------------------
    def _run_stage(self, index: int, stage: Stage) -> bool:
        """Train one stage (False: it had finished before, its weights are loaded instead)."""
        import torch

        folder = self.output / stage.name
        seed = stage_seed(self.recipe, index)
        torch.manual_seed(seed)
        random.seed(seed)
        self.model, vlm, optimizer = stage_trainables(self.model, stage)
        wrapper = CachedFeatureVLM.make(vlm)
        if (folder / "trainable.safetensors").is_file() and (folder / "state.json").is_file():
            load_trainable(wrapper, folder / "trainable.safetensors")
            self.history += json.loads((folder / "state.json").read_text())["history"]
            return False
        run = self._prepare_stage(stage, seed, wrapper, optimizer)
        self._steps(run)
        self._finish_stage(run)
        self.history += run.history
        return True

    def _prepare_stage(self, stage: Stage, seed: int, wrapper, optimizer) -> _StageRun:
        """The stage's module and optimizer prepared by the scheme, at its first step or its checkpoint's."""
        from transformers import get_scheduler

        accelerator = self.accelerator
        world = accelerator.num_processes
        accumulation = stage.accumulation(world)
        samples = self.dataset.samples
        total = total_steps(stage, len(samples), world)
        scheduler = get_scheduler(stage.scheduler if stage.scheduler != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=math.ceil(stage.warmup_ratio * total),
                                  num_training_steps=total)
        checkpoint = self.output / stage.name / "checkpoint"
        resuming = (checkpoint / "state.json").is_file()
        if resuming:
            # the weights go in before the module is prepared: a sharded module takes them from here
            load_trainable(wrapper, checkpoint / "trainable.safetensors")
        model, optimizer = self.scheme.prepare(wrapper, optimizer, micro_batch=stage.micro_batch,
                                               accumulation=accumulation, max_grad_norm=stage.max_grad_norm)
        held = self.scheme.weights_held(model)
        step, history = 0, []
        if resuming:
            step, history = self._load_checkpoint(checkpoint, model, optimizer, scheduler)
        sampler = MicroBatchSampler([s.length for s in samples], [s.image is not None for s in samples],
                                    global_batch=stage.global_batch, micro_batch=stage.micro_batch, world=world,
                                    rank=accelerator.process_index, seed=seed, group=self.recipe.group_by_length,
                                    start=step, total=total)
        return _StageRun(stage, model, optimizer, scheduler, sampler, history, accumulation, held)

    def _steps(self, run: _StageRun) -> None:
        """The optimizer steps from where the stage stands to its last, each over this process's micro-batches."""
        accelerator, scheme, stage, model = self.accelerator, self.scheme, run.stage, run.model
        step = run.sampler.start
        show = self.show_progress and accelerator.is_main_process
        if show and step:
            say(f"{stage.name}: resuming from step {step:,} of {run.total:,}, from the checkpoint of an earlier start")
        progress = Ticker(stage.name, run.total, unit="steps", show=show)
        progress.resume_at(step)
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        model.train()
        pad_id = self.processor.tokenizer.pad_token_id
        with progress, contextlib.closing(micro_batches(self.dataset.samples, run.sampler, self.features,
                                                         pad_id)) as batches:
            for micro in batches:
                micro = micro.to(accelerator.device)
                with scheme.micro_step(model, micro.last):
                    loss = model(micro.input_ids, micro.attention_mask, micro.labels, micro.features).loss
                    scheme.backward(loss, micro.parts)
                loss_sum += float(loss.detach())
                if not micro.last:
                    continue
                scheme.clip(model, stage.max_grad_norm)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
                step, seen = step + 1, seen + micro.step_samples
                loss_value, loss_sum = _mean_across(accelerator, loss_sum / micro.parts), 0.0
                lr = run.scheduler.get_last_lr()[-1]
                rate = seen / max(time.perf_counter() - started, 1e-9)
                run.history.append({"stage": stage.name, "step": step, "loss": loss_value, "lr": lr})
                progress.update(step, info=f"loss {loss_value:.4f}, lr {lr:.2e}, {fmt_rate(rate, 'samples')}")
                if self.save_every and step % self.save_every == 0 and step < run.total:
                    self._save_checkpoint(run, step)
                info = StepInfo(stage.name, step, run.total, loss_value, lr, rate, accelerator.unwrap_model(model).vlm)
                for callback in self.callbacks:
                    callback(info)
                model.train()

    def _finish_stage(self, run: _StageRun) -> None:
        """The stage's trained weights and record written (by the main process), its checkpoint removed."""
        accelerator, folder = self.accelerator, self.output / run.stage.name
        accelerator.wait_for_everyone()
        trained = self.scheme.trainable_state(run.model)  # every process takes part
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            write_safetensors(folder / "trainable.safetensors", trained)
            write_json(folder / "state.json", {
                "steps": run.total, "history": run.history, "padding_fraction": round(run.sampler.padding(), 4),
                "accumulation": run.accumulation, "world_size": accelerator.num_processes,
                "sharding": self.scheme.name, "weights_held": round(run.held, 4)})
            shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        accelerator.wait_for_everyone()
        self.scheme.release(run.model)

    # -- checkpoints inside a stage -----------------------------------------------------------------
    def _save_checkpoint(self, run: _StageRun, step: int) -> None:
        """Weights, optimizer, scheduler and random state; every process takes part (sharded weights and
        optimizer state are gathered onto the main process, which writes)."""
        import torch

        optimizer_sd = self.scheme.optimizer_state(run.model, run.optimizer)
        weights = self.scheme.trainable_state(run.model)
        if not self.accelerator.is_main_process:
            return
        with staged_dir(self.output / run.stage.name / "checkpoint") as stage:
            write_safetensors(stage / "trainable.safetensors", weights)
            torch.save({"optimizer": optimizer_sd, "scheduler": run.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       stage / "optimizer.pt")
            write_json(stage / "state.json", {"step": step, "history": run.history})

    def _load_checkpoint(self, folder: Path, model, optimizer, scheduler) -> tuple[int, list[dict[str, Any]]]:
        """Optimizer, scheduler and random state of a checkpoint (its weights are loaded before preparing);
        returns its step and the history up to it."""
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
