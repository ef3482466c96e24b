"""The module that trains: the VLM fed with cached vision features, with LoRA on its language model and
the stage's trainable weights in fp32, and what builds it (the checkpoint loaded whole, the optimizer's
groups, a stage's trained weights loaded back)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.recipe import Recipe, Stage

PROJECTOR = "multi_modal_projector"


def precision_dtype(precision: str):
    """The torch dtype of a recipe's precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_base_model(model_dir: Path, recipe: Recipe, accelerator):
    """The checkpoint, whole on every process, frozen, in the recipe's precision."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from backbone_swap.training.schemes import loading_whole

    torch.manual_seed(recipe.seed)
    with loading_whole(accelerator):
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=precision_dtype(recipe.precision))
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    if recipe.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass. transformers 5 renamed the switch
    (``activation_checkpointing_enable``) and warns at the old name; its first releases have only the old one."""
    switch = getattr(model, "activation_checkpointing_enable", None)
    if switch is not None:
        switch(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # the frozen embeddings' output must carry gradients to the LoRA layers


def load_vision_tower(model_dir: Path, precision: str, accelerator):
    """The checkpoint's vision tower alone, whole in every process (each runs it), on this process's device.

    Only the tower's tensors are read (the checkpoint's ``model.vision_tower.`` keys mapped onto the tower's own
    model class): at 8B, loading the whole VLM to run its tower took ~16 GB of host memory before training loaded
    the model again."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging

    from backbone_swap.training.schemes import loading_whole

    config = AutoConfig.from_pretrained(model_dir)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the language model's tensors are left out on purpose: no report of them
    try:
        with loading_whole(accelerator, every_process=True):
            # the tower's keys as transformers 5 writes them, or as earlier versions did (llava-hf's releases)
            tower, info = AutoModel.from_pretrained(
                model_dir, config=config.vision_config, dtype=precision_dtype(precision), output_loading_info=True,
                key_mapping={r"^model\.vision_tower\.": "", r"^vision_tower\.": ""})
            if info["missing_keys"]:  # a layout of its own: the whole model knows where its tower is
                from transformers import LlavaForConditionalGeneration

                whole = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=precision_dtype(precision))
                tower = whole.model.vision_tower
    finally:
        logging.set_verbosity(verbosity)
    return tower.to(accelerator.device).eval()


def stage_trainables(model, stage: Stage) -> tuple[Any, Any, Any]:
    """``model`` with what ``stage`` trains made trainable (LoRA added by the first stage that has it); returns
    the model (a peft model once LoRA is on), the VLM inside it, and the stage's optimizer."""
    import torch
    from peft import LoraConfig, get_peft_model

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
    return model, vlm, torch.optim.AdamW(groups, weight_decay=stage.weight_decay)


def load_trainable(module, path: Path) -> None:
    """Copy a stage's saved trainable weights into ``module`` (before it is prepared: a sharded module takes
    them from there)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(path)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


class CachedFeatureVLM:
    """Builds the module accelerate prepares: the VLM fed with cached vision features instead of pixels."""

    @staticmethod
    def make(model):
        import torch
        from transformers.modeling_outputs import CausalLMOutputWithPast

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
                if _plain_output_layer(vlm.config):
                    hidden = vlm.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
                    loss = supervised_loss(vlm.get_output_embeddings(), hidden, labels)
                else:  # an output layer with its own scaling or capping: the model's own loss
                    loss = vlm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                               use_cache=False).loss
                if features is None:
                    # a text-only batch never reaches the projector: keep its weights in the graph with a zero
                    # term, or a projector-only stage would have nothing to differentiate, and processes with
                    # and without images would disagree on which gradients to exchange (DDP and FSDP hang).
                    # It runs here, inside the forward, where sharded weights are gathered.
                    width = _projector_input_width(projector)
                    probe = projector(embeds.new_zeros((1, 1, width)))
                    loss = loss + 0.0 * probe.sum()
                return CausalLMOutputWithPast(loss=loss)

        return _Module(model)


# rows of the output layer computed at once: 4,096 rows of a 128,256-token vocabulary are 2.1 GB of fp32 logits
LOSS_CHUNK_ROWS = 4096


def _plain_output_layer(config) -> bool:
    """Whether the language model's logits are its output layer's product and nothing more (Llama, Mistral,
    Qwen, Vicuna...): then only the supervised positions need it. Gemma 2's capping or Cohere's scale are
    applied by the model's own forward, which is kept for them."""
    text = config.text_config
    return not any(getattr(text, key, None) not in (None, 1, 1.0)
                   for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))


def supervised_loss(head, hidden, labels):
    """The causal LM loss over the supervised positions only: mean cross-entropy of each position's logits
    against the next token, as transformers computes it, but with the output layer run on the positions whose
    next token is supervised rather than on every position. In LLaVA data the image tokens and the prompt are
    most positions, and at a 128K vocabulary the logits of all of them are gigabytes. Beyond
    ``LOSS_CHUNK_ROWS`` rows the logits are made a chunk at a time and made again in the backward pass, so
    their memory stays that of one chunk."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from backbone_swap.training.data import IGNORE

    targets = labels[:, 1:]
    keep = targets != IGNORE
    rows, wanted = hidden[:, :-1][keep], targets[keep]
    count = wanted.numel()
    if count == 0:  # nothing supervised (every reply cut by max_length): no loss, but a graph to step through
        return hidden.sum() * 0.0
    if count <= LOSS_CHUNK_ROWS:
        return _summed_cross_entropy(head, rows, wanted) / count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, LOSS_CHUNK_ROWS):
        part, part_targets = rows[start:start + LOSS_CHUNK_ROWS], wanted[start:start + LOSS_CHUNK_ROWS]
        total = total + checkpoint(_summed_cross_entropy, head, part, part_targets, use_reentrant=False)
    return total / count


def _summed_cross_entropy(head, rows, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head(rows).float(), targets, reduction="sum")


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
