"""The cost figures of ``upgrade``'s plan against what torch counts and what training measures."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from backbone_swap.checkpoints.anatomy import compatibility, read_anatomy
from backbone_swap.checkpoints.folder import open_checkpoint
from backbone_swap.training import estimate


def _shapes(kit, lora_r=8):
    old_ckpt, new_ckpt = open_checkpoint(kit.vlm), open_checkpoint(kit.mistral)
    old, new = read_anatomy(old_ckpt), read_anatomy(new_ckpt)
    compat = compatibility(old, new, new_ckpt)
    return estimate.shapes_of(old, new, new_ckpt, compat, tuple(new.lora_targets), lora_r), compat


@pytest.mark.parametrize(("lora", "checkpointing"), [(False, False), (False, True), (True, True), (True, False)])
def test_the_flops_of_one_sample_are_what_torch_counts(kit, transplanted, lora, checkpointing):
    """One forward and backward of the module training runs, counted by torch's FLOP counter (attention in
    eager mode, so its matrix products are counted too)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from backbone_swap.training.model import CachedFeatureVLM, enable_checkpointing, lora_target_regex

    shapes, compat = _shapes(kit)
    vlm = LlavaForConditionalGeneration.from_pretrained(transplanted["mistral"], attn_implementation="eager")
    vlm.config.use_cache = False
    for p in vlm.parameters():
        p.requires_grad_(False)
    if checkpointing:
        enable_checkpointing(vlm)
    if lora:
        vlm = get_peft_model(vlm, LoraConfig(r=8, target_modules=lora_target_regex(vlm, "family"))).get_base_model()
    for p in vlm.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    vlm.train()
    length, image = 96, vlm.config.image_token_id
    ids = torch.randint(0, 200, (1, length), generator=torch.Generator().manual_seed(0))
    ids[ids == image] = 1
    ids[0, 4:4 + shapes.image_tokens] = image
    features = torch.randn(1, shapes.image_tokens, compat.projector_in)
    labels = ids.clone()
    labels[0, :80] = -100  # the image and the prompt: the reply is the last 16 tokens
    with FlopCounterMode(display=False) as counter:
        CachedFeatureVLM.make(vlm)(ids, torch.ones_like(ids), labels, features).loss.backward()
    # the output layer runs on the 16 positions whose next token is supervised
    expected = (estimate.sample_flops(shapes, length, length ** 2, lora=lora, checkpointing=checkpointing,
                                      supervised=16)
                + estimate.projector_flops(shapes))
    # checkpointing: torch does not recompute each layer's last product (the MLP's output), which the
    # estimate counts
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.05 if checkpointing else 0.01)
    if checkpointing:
        assert counter.get_total_flops() < expected


def test_the_flops_of_the_tower_are_what_torch_counts(kit):
    from transformers import LlavaForConditionalGeneration

    shapes, _ = _shapes(kit)
    tower = LlavaForConditionalGeneration.from_pretrained(kit.vlm, attn_implementation="eager").model.vision_tower
    size = tower.config.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower(torch.randn(1, 3, size, size))
    # the estimate takes every weight as a matrix product over every position; the position embeddings and
    # norms are not, which on this tiny tower is 7% of its weights (under 1% for CLIP-L)
    assert counter.get_total_flops() == pytest.approx(estimate.tower_flops(shapes), rel=0.1)


def test_the_measured_tokens_are_those_training_counts(kit, colour_data, tmp_path):
    """The plan's sampled token count against the dataset the training code builds from the same file."""
    from transformers import AutoProcessor, AutoTokenizer

    from backbone_swap.checkpoints.templates import end_of_turn
    from backbone_swap.training.data import build_dataset
    from backbone_swap.transplant import transplant

    shapes, _ = _shapes(kit)
    out = transplant(kit.vlm, kit.mistral, tmp_path / "t", hash_inputs=False).output
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    built = build_dataset(colour_data["train"], tokenizer, image_root=colour_data["root"], image_token="<image>",
                          image_tokens=shapes.image_tokens, max_length=4096, end_of_turn=end_of_turn(tokenizer))
    # the LLM's own tokenizer and template, as the plan reads them before the transplant exists
    measured = estimate.measure_data(colour_data["train"], AutoTokenizer.from_pretrained(kit.mistral),
                                     shapes.image_tokens)
    lengths = [s.length for s in built.samples]
    assert measured.records == len(lengths) == 128 and measured.images == 128
    assert measured.tokens == pytest.approx(sum(lengths), rel=0.1)
    assert measured.longest == pytest.approx(max(lengths), rel=0.15)
    supervised = [s.supervised for s in built.samples]
    assert measured.supervised == pytest.approx(sum(supervised), rel=0.15)
    assert measured.most_supervised == pytest.approx(max(supervised), abs=2)


def test_memory_parts_follow_the_recipe(kit, colour_data):
    from transformers import AutoTokenizer

    from backbone_swap.training.recipe import apply_overrides, load_recipe

    shapes, _ = _shapes(kit)
    data = estimate.measure_data(colour_data["train"], AutoTokenizer.from_pretrained(kit.mistral),
                                 shapes.image_tokens)
    bf16 = load_recipe("llava15-lora")
    fp32 = apply_overrides(bf16, ["precision=fp32"])
    plain = apply_overrides(bf16, ["gradient_checkpointing=false"])
    parts = estimate.peak_memory(shapes, data, bf16, trainable=1000)
    weights = (read_anatomy(open_checkpoint(kit.vlm)).parameters["vision_tower"]
               + read_anatomy(open_checkpoint(kit.mistral)).parameters["language_model"])
    assert parts["weights"] == 2 * weights
    assert estimate.peak_memory(shapes, data, fp32, trainable=1000)["weights"] == 4 * weights
    assert parts["trainable_state"] == 20_000
    micro = max(s.micro_batch for s in bf16.stages)
    # only the positions the loss reads reach the output layer: the longest reply's, micro-batch times
    assert 0 < data.most_supervised < data.longest
    assert parts["logits"] == micro * data.most_supervised * shapes.vocab * 10
    assert estimate.peak_memory(shapes, data, plain, trainable=1000)["activations"] > parts["activations"]
    json.dumps(parts)  # the plan records them


def test_activations_count_a_gated_mlp_by_its_inner_width(kit):
    """Llama 3 8B's widths, bf16, micro batch 16 x 2,048, gradient checkpointing, worked by hand: each of the
    32 layers keeps its input (2 x 4,096 bytes a token); the layer in its backward keeps attention and norms
    (15 x 4,096), the MLP's input (2 x 4,096) and its four inner tensors (8 x 14,336), and holds three
    gradients of the inner width (3 x 2 x 14,336)."""
    import dataclasses

    from backbone_swap.training.recipe import apply_overrides, load_recipe

    shapes, _ = _shapes(kit)
    config = json.loads((kit.mistral / "config.json").read_text())
    assert shapes.intermediate == config["intermediate_size"] > 0
    llama3 = dataclasses.replace(shapes, layers=32, hidden=4096, intermediate=14336)
    recipe = apply_overrides(load_recipe("llava15-lora"), ["stages.stage1.micro_batch=16",
                                                           "stages.stage2.micro_batch=16", "max_length=2048"])
    data = estimate.DataSize(records=1, images=1, tokens=2048, tokens_squared=2048 ** 2, longest=2048)
    tokens = 16 * 2048
    per_token = 32 * 2 * 4096 + 15 * 4096 + 2 * 4096 + 8 * 14336 + 3 * 2 * 14336
    assert estimate.peak_memory(llama3, data, recipe, trainable=0)["activations"] == tokens * per_token
    unknown = dataclasses.replace(llama3, intermediate=0)  # no gated MLP: a GPT layer's 34h, its MLP 4h wide
    assert estimate.peak_memory(unknown, data, recipe, trainable=0)["activations"] == tokens * (
        32 * 2 * 4096 + 34 * 4096 + 3 * 2 * 4 * 4096)
    # without checkpointing every layer keeps all it needs; the backward still holds one layer's gradients
    plain = apply_overrides(recipe, ["gradient_checkpointing=false"])
    assert estimate.peak_memory(llama3, data, plain, trainable=0)["activations"] == tokens * (
        32 * (15 * 4096 + 2 * 4096 + 8 * 14336) + 3 * 2 * 14336)


class _Listing:
    """The tensor names and shapes of a checkpoint, as ``llm_shapes`` reads them from safetensors headers."""

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        self.shapes = shapes

    def names(self) -> list[str]:
        return list(self.shapes)

    def shape(self, name: str) -> tuple[int, int]:
        return self.shapes[name]


def test_only_a_gated_mlp_is_counted_by_its_inner_width():
    config = {"hidden_size": 16, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
              "vocab_size": 100}
    gpt = {"model.embed_tokens.weight": (100, 16), "model.layers.0.mlp.fc1.weight": (64, 16),
           "model.layers.0.mlp.fc2.weight": (16, 64)}
    llama = {"model.embed_tokens.weight": (100, 16), "model.layers.0.mlp.gate_proj.weight": (64, 16),
             "model.layers.0.mlp.up_proj.weight": (64, 16), "model.layers.0.mlp.down_proj.weight": (16, 64)}
    phi3 = {"model.embed_tokens.weight": (100, 16), "model.layers.0.mlp.gate_up_proj.weight": (128, 16),
            "model.layers.0.mlp.down_proj.weight": (16, 64)}
    found = {name: estimate.llm_shapes(config, _Listing(weights), (), 8) for name, weights in
             (("gpt", gpt), ("llama", llama), ("phi3", phi3))}
    assert {name: shapes["intermediate"] for name, shapes in found.items()} == {"gpt": 0, "llama": 64, "phi3": 64}
    assert found["llama"]["layer_linear"] == 3 * 64 * 16 and found["gpt"]["layer_linear"] == 2 * 64 * 16


def test_max_steps_caps_the_compute_of_a_stage(kit, colour_data):
    from transformers import AutoTokenizer

    from backbone_swap.training.recipe import apply_overrides, load_recipe

    shapes, _ = _shapes(kit)
    data = estimate.measure_data(colour_data["train"], AutoTokenizer.from_pretrained(kit.mistral),
                                 shapes.image_tokens)
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stages.stage1.epochs=1", "stages.stage2.epochs=1"])
    whole = estimate.training_flops(shapes, data, recipe)
    # 128 records; stage 2 capped at a quarter of them
    quarter = 32 // recipe.stages[1].global_batch
    capped = estimate.training_flops(shapes, data, apply_overrides(recipe, [f"stage2.max_steps={quarter}"]))
    stage2 = (estimate.sample_flops(shapes, data.tokens, data.tokens_squared, lora=True,
                                    checkpointing=recipe.gradient_checkpointing, supervised=data.supervised)
              + estimate.projector_flops(shapes) * data.images)
    assert whole - capped == pytest.approx(stage2 * 0.75)
