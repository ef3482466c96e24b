"""How a training run is spread over processes, and what the trainer does differently when each process
holds only a shard of the weights.

``accelerate launch --config_file`` decides the scheme (DDP, FSDP, DeepSpeed ZeRO); the trainer stays one
loop. Three things depend on the scheme, and they live here:

- building the accelerator: accelerate only shards on accelerators, while FSDP2 itself also runs on CPU
  processes over gloo. When an FSDP configuration is launched on CPU processes, the run is set up as FSDP
  anyway, so the same code path that shards a model over 8 GPUs is exercised on a laptop;
- gathering the trainable weights (LoRA + projector) onto the main process, which writes them: under FSDP
  and ZeRO-3 every process holds a slice of each tensor;
- whether the module can be reused by the next stage: sharding rewrites a module's parameters in place,
  so after a sharded stage the next stage starts from a fresh copy of the checkpoint plus what the earlier
  stages trained (see ``Trainer``).
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


def scheme(accelerator) -> str:
    """``single``, ``ddp``, ``fsdp``, ``zero2`` or ``zero3`` (recorded in the stage's state)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return f"zero{accelerator.state.deepspeed_plugin.zero_stage}"
    return "ddp" if accelerator.num_processes > 1 else "single"


def consumes_module(accelerator) -> bool:
    """Whether preparing a module leaves it unfit for another stage or the export.

    FSDP and ZeRO-3 replace its parameters with per-process slices; a DeepSpeed engine of either stage
    leaves its gradient hooks on the parameters, which would fire again under the next stage's engine.
    """
    return scheme(accelerator) in {"fsdp", "zero2", "zero3"}


def release(accelerator, model) -> None:
    """Let go of a finished stage's prepared module, engine and optimizer before the next one is built."""
    import gc

    import torch

    if scheme(accelerator).startswith("zero") and hasattr(model, "destroy"):
        model.destroy()  # the DeepSpeed engine: removes its hooks
    accelerator.free_memory()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def configure_deepspeed(accelerator, *, micro_batch: int, accumulation: int, max_grad_norm: float | None) -> None:
    """Put a stage's batch geometry and clipping into the DeepSpeed config before its engine is built.

    DeepSpeed steps the optimizer itself once every ``gradient_accumulation_steps`` backward passes and
    clips inside that step; both have to match the recipe's stage, which may differ from the previous one.
    """
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = accumulation
    config["train_batch_size"] = micro_batch * accumulation * accelerator.num_processes
    config["gradient_clipping"] = float(max_grad_norm or 0.0)


def trainable_state(accelerator, module) -> dict[str, Any]:
    """The trainable tensors of ``module`` as whole CPU tensors, on the main process (empty elsewhere).

    Every process must call it: under FSDP and ZeRO-3 assembling a tensor is a collective operation.
    """
    import torch

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    gather = contextlib.nullcontext()
    if scheme(accelerator) == "zero3":
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
    out = {}
    with gather, torch.no_grad():
        for name, param in named:
            full = param.full_tensor() if _is_dtensor(param) else param
            if accelerator.is_main_process:
                out[name] = full.detach().to("cpu").clone().contiguous()
    return out


def local_fraction(module) -> float:
    """The share of the module's weights this process holds: 1 unless sharded (1/processes under FSDP)."""
    held = total = 0
    for param in module.parameters():
        if hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3: an empty placeholder plus this process's slice
            held, total = held + param.ds_tensor.numel(), total + param.ds_numel
        elif _is_dtensor(param):
            held, total = held + param.to_local().numel(), total + param.numel()
        else:
            held, total = held + param.numel(), total + param.numel()
    return held / max(total, 1)


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def optimizer_state(accelerator, model, optimizer) -> dict[str, Any] | None:
    """The optimizer's whole state on the main process (None elsewhere); every process calls it.

    Not for DeepSpeed, whose optimizer state lives in its engine: ``train`` refuses --save-every there.
    """
    if scheme(accelerator) == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(model, _inner(optimizer),
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if accelerator.is_main_process else None
    return optimizer.state_dict() if accelerator.is_main_process else None


def load_optimizer_state(accelerator, model, optimizer, state: dict[str, Any] | None) -> None:
    """Restore what ``optimizer_state`` returned; under FSDP the main process's copy is sharded out."""
    if scheme(accelerator) == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # only the main process's copy counts: it is broadcast and sliced
        full = (state or {}) if accelerator.is_main_process else {}
        set_optimizer_state_dict(model, _inner(optimizer), optim_state_dict=full,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return
    optimizer.load_state_dict(state)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)
