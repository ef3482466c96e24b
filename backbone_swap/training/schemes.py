"""How a training run is spread over processes, and what differs when each process holds only a shard of
the weights.

``accelerate launch --config_file`` decides the scheme (one process or DDP, FSDP2, DeepSpeed ZeRO-2/3); the
step loop stays one loop and asks the run's ``TrainingScheme`` for what depends on it: preparing the module
and optimizer, where gradients are exchanged, backward, clipping, gathering the trained weights (LoRA +
projector) onto the main process that writes them, the optimizer state of a checkpoint, and letting go of
a stage's module. Sharding rewrites a module's parameters in place, so after a sharded stage the next stage
starts from a fresh copy of the checkpoint plus what the earlier stages trained (see the stage loop).

Building the accelerator lives here too: accelerate only shards on accelerators, while FSDP2 and DeepSpeed
also run on CPU processes over gloo. When such a configuration is launched on CPU processes, the run is set
up with that scheme anyway, so the same code path that shards a model over 8 GPUs is exercised on a laptop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from backbone_swap.errors import BackboneSwapError


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in {"1", "true", "yes"}


# how long processes wait in a collective for work the main process does alone: a transplant of a large LLM,
# or the vision-feature cache of a large data set (accelerate's default is NCCL's 10 minutes)
PROCESS_GROUP_TIMEOUT = timedelta(hours=6)


def launch_state():
    """accelerate's state of this process (its rank and device; gloo on CPU), with the run's timeout."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def stop_together(refusal: tuple[str, str] | None, state: Any = None) -> None:
    """Raise ``refusal`` (message, hint), found by the main process, in every process of the run: the others
    would otherwise wait for the main one in their next collective. ``state``: accelerate's state (None in one
    process)."""
    if state is not None and state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise BackboneSwapError(*refusal)


def make_accelerator(precision: str):
    """The run's one accelerator, with the scheme of the launch configuration (CPU FSDP included)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    mixed = "no" if precision == "fp32" else precision
    shared = AcceleratorState._shared_state
    if shared.get("_mixed_precision", mixed) != mixed and shared.get("distributed_type") != DistributedType.DEEPSPEED:
        # an earlier training in this process chose another precision; accelerate keeps one per process and
        # refuses to change it, so its state (not the processes' group) starts again (DeepSpeed records "no" and
        # takes its precision from its own configuration)
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)])
    if accelerator.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_FSDP"):
        _fsdp_on_cpu(accelerator)
    if accelerator.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        _deepspeed_on_cpu(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        # FSDP1 flattens parameters, and mixing frozen and trainable ones needs use_orig_params plus its own
        # state-dict handling; FSDP2 shards each parameter separately, which is what LoRA training wants
        raise BackboneSwapError("backbone-swap trains under FSDP version 2 only",
                                "Set fsdp_version: 2 in the accelerate config (see recipes/accelerate/fsdp-8gpu.yaml)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero3_init_flag:
        # the trainer loads whole models (LoRA added, trained weights loaded) and lets the engine partition
        # them; a model created straight into partitions would need all of that done on slices
        raise BackboneSwapError("backbone-swap does not support zero3_init_flag: true",
                                "Set zero3_init_flag: false in the accelerate config (see recipes/accelerate/)")
    return accelerator


@contextlib.contextmanager
def loading_whole(accelerator, *, every_process: bool = False) -> Iterator[None]:
    """Load checkpoints as whole tensors even under ZeRO-3 (and, with ``every_process``, FSDP).

    accelerate registers its DeepSpeed config with transformers, and under ZeRO-3 ``from_pretrained`` then
    creates models straight into partitions whatever ``zero3_init_flag`` says; the engine partitions the
    whole model when it is prepared instead. Under FSDP with ``fsdp_cpu_ram_efficient_loading``,
    transformers may leave the weights of every process but the first of a machine unread (FSDP sends them
    when the model is prepared): right for the model that trains, wrong for a vision tower that each
    process runs itself. transformers 5.24 reads them everywhere and only skips their initialisation, but
    the tower must not depend on that.
    """
    plugin = accelerator.state.deepspeed_plugin  # None unless DeepSpeed
    restore = []
    if plugin is not None and plugin.hf_ds_config.is_zero3():
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        restore.append(plugin.set_deepspeed_weakref)
    flag = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    if every_process and flag in os.environ:
        value = os.environ.pop(flag)
        restore.append(lambda: os.environ.__setitem__(flag, value))
    try:
        yield
    finally:
        for undo in restore:
            undo()


def _fsdp_on_cpu(accelerator) -> None:
    """Turn a multi-process CPU run launched with an FSDP configuration into an FSDP2 run over gloo.

    accelerate reads the FSDP settings from the environment (``accelerate launch`` writes them there from
    the config file) but only switches to FSDP on accelerators; FSDP2 shards CPU tensors just as well.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()  # every field from the FSDP_* environment variables
    if plugin.fsdp_version != 2:
        raise BackboneSwapError("FSDP on CPU processes needs FSDP version 2",
                                "Set fsdp_version: 2 in the accelerate config, or FSDP_VERSION=2")
    state = AcceleratorState()
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _deepspeed_on_cpu(accelerator) -> None:
    """Turn a multi-process CPU run launched with a DeepSpeed configuration into a DeepSpeed run over gloo.

    DeepSpeed has a CPU accelerator (chosen by itself when there is no GPU, communicating over gloo), but
    accelerate only sets DeepSpeed up on accelerators.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, is_deepspeed_available

    if not is_deepspeed_available():
        raise BackboneSwapError("the accelerate configuration asks for DeepSpeed, which is not installed",
                                'Install it with pip install "backbone-swap[deepspeed]"')
    import deepspeed.comm

    plugin = DeepSpeedPlugin()  # every field from the ACCELERATE_DEEPSPEED_* environment variables
    plugin.set_mixed_precision(accelerator.mixed_precision)
    state = AcceleratorState()
    state.deepspeed_plugins = plugin
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    plugin.select(_from_accelerator_state=True)
    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


class TrainingScheme:
    """One process's part in training a stage's module; the step loop calls only these methods.

    This class is a process that holds the whole module (alone, or beside others under DDP); FSDP2 and
    DeepSpeed ZeRO change what differs for them.
    """

    name: str  # recorded in each stage's state as "sharding"
    # whether preparing a module leaves it unfit for another stage or the export
    consumes_module = False
    # whether a stage can keep checkpoints between its steps (--save-every)
    saves_inside_stage = True

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator

    def prepare(self, module, optimizer, *, micro_batch: int, accumulation: int, max_grad_norm: float | None):
        """The module and optimizer as this scheme trains them, for a stage of that batch geometry."""
        return self.accelerator.prepare(module, optimizer)

    @contextlib.contextmanager
    def micro_step(self, model, last: bool) -> Iterator[None]:
        """Where one micro-batch's forward and backward run; gradients are exchanged after the step's last one.

        The loop accumulates itself (micro-batches per step vary with the last batch of an epoch), so it tells
        accelerate where a step ends through its gradient state: accelerate's prepared optimizer, and a
        DeepSpeed engine, step only at that boundary.
        """
        accelerator = self.accelerator
        accelerator.gradient_state._set_sync_gradients(last)
        exchange = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with exchange, accelerator.autocast():
            yield

    def backward(self, loss, parts: int) -> None:
        """Gradients of one of this process's ``parts`` micro-batches in the step: its share of the step's loss."""
        self.accelerator.backward(loss / parts)

    def clip(self, model, max_norm: float | None) -> None:
        if max_norm:
            # all parameters, so that accelerate recognises the prepared module and takes its FSDP path;
            # frozen ones have no gradient and do not count
            self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def trainable_state(self, model) -> dict[str, Any]:
        """The trainable tensors as whole CPU tensors, on the main process (empty elsewhere).

        Every process must call it: where each holds a slice of a tensor, assembling it is a collective.
        """
        import torch

        named = [(n, p) for n, p in self.accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
        out = {}
        with self._gathered([p for _, p in named]), torch.no_grad():
            for name, param in named:
                whole = self._whole(param)
                if self.accelerator.is_main_process:
                    out[name] = whole.detach().to("cpu").clone().contiguous()
        return out

    def _gathered(self, params: list) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _whole(self, param):
        return param

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        """The optimizer's whole state on the main process (None elsewhere); every process calls it."""
        return optimizer.state_dict() if self.accelerator.is_main_process else None

    def load_optimizer_state(self, model, optimizer, state: dict[str, Any] | None) -> None:
        """Restore what ``optimizer_state`` returned."""
        optimizer.load_state_dict(state)

    def weights_held(self, model) -> float:
        """The share of the module's weights this process holds: 1 unless sharded."""
        held = total = 0
        for param in self.accelerator.unwrap_model(model).parameters():
            here, whole = self._held(param)
            held, total = held + here, total + whole
        return held / max(total, 1)

    def _held(self, param) -> tuple[int, int]:
        """Elements of ``param`` held by this process, and in all."""
        return param.numel(), param.numel()

    def release(self, model) -> None:
        """Let go of a finished stage's prepared module before the next one is built (when it was consumed)."""


class Replicated(TrainingScheme):
    """Every process holds the whole module: one process, or DDP."""

    def __init__(self, accelerator) -> None:
        super().__init__(accelerator)
        self.name = "ddp" if accelerator.num_processes > 1 else "single"


class _Sharded(TrainingScheme):
    """A scheme whose preparing leaves the module unfit for another stage or the export: FSDP2 and ZeRO-3
    replace its parameters with per-process slices, and a DeepSpeed engine of either stage leaves its gradient
    hooks on them, which would fire again under the next stage's engine. Each later stage and the export start
    from a fresh copy of the checkpoint with the earlier stages' trained weights loaded."""

    consumes_module = True

    def release(self, model) -> None:
        import gc

        import torch

        self.accelerator.free_memory()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class FSDP2(_Sharded):
    """FSDP2: every process holds a slice of each parameter (a DTensor), and of the optimizer state."""

    name = "fsdp"

    def _whole(self, param):
        return param.full_tensor() if _is_dtensor(param) else param

    def _held(self, param) -> tuple[int, int]:
        return (param.to_local().numel(), param.numel()) if _is_dtensor(param) else super()._held(param)

    def optimizer_state(self, model, optimizer) -> dict[str, Any] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(model, _inner(optimizer),
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.accelerator.is_main_process else None

    def load_optimizer_state(self, model, optimizer, state: dict[str, Any] | None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # only the main process's copy counts: it is broadcast and sliced
        full = (state or {}) if self.accelerator.is_main_process else {}
        set_optimizer_state_dict(model, _inner(optimizer), optim_state_dict=full,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


class ZeRO(_Sharded):
    """DeepSpeed ZeRO-2 (optimizer state and gradients sliced) or ZeRO-3 (the parameters too).

    The engine steps the optimizer and clips inside that step; its optimizer state lives in the engine, which
    is why ``train`` refuses --save-every here.
    """

    saves_inside_stage = False

    def __init__(self, accelerator) -> None:
        super().__init__(accelerator)
        self.stage = accelerator.state.deepspeed_plugin.zero_stage
        self.name = f"zero{self.stage}"

    def prepare(self, module, optimizer, *, micro_batch: int, accumulation: int, max_grad_norm: float | None):
        """The stage's batch geometry and clipping go into the DeepSpeed config before its engine is built:
        DeepSpeed steps once every ``gradient_accumulation_steps`` backward passes and clips inside that step,
        and both must match the recipe's stage, which may differ from the previous one."""
        accelerator = self.accelerator
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = micro_batch
        config["gradient_accumulation_steps"] = accumulation
        config["train_batch_size"] = micro_batch * accumulation * accelerator.num_processes
        config["gradient_clipping"] = float(max_grad_norm or 0.0)
        return accelerator.prepare(module, optimizer)

    def backward(self, loss, parts: int) -> None:
        # divided here, not by the engine: the number of parts varies with the last batch of an epoch
        self.accelerator.backward(loss / parts, scale_wrt_gas=False)

    def clip(self, model, max_norm: float | None) -> None:
        """Nothing: the engine clips inside its step (see ``prepare``)."""

    def _gathered(self, params: list) -> contextlib.AbstractContextManager:
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _held(self, param) -> tuple[int, int]:
        if hasattr(param, "ds_numel"):  # ZeRO-3: an empty placeholder plus this process's slice
            return param.ds_tensor.numel(), param.ds_numel
        return super()._held(param)

    def release(self, model) -> None:
        if hasattr(model, "destroy"):
            model.destroy()  # the DeepSpeed engine: removes its hooks, which would fire under the next engine
        super().release(model)


def training_scheme(accelerator) -> TrainingScheme:
    """The scheme of the accelerator's launch configuration (recorded in each stage's state as ``sharding``)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return FSDP2(accelerator)
    if kind == DistributedType.DEEPSPEED:
        return ZeRO(accelerator)
    return Replicated(accelerator)


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)
