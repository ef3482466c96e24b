"""Training's loss on the supervised positions alone equals transformers' loss over every position, and so do
its gradients: with and without gradient checkpointing, with LoRA, in one piece and in chunks."""

from __future__ import annotations

import pytest
import torch

from backbone_swap.training import model as training_model
from backbone_swap.training.data import IGNORE
from backbone_swap.training.model import CachedFeatureVLM, enable_checkpointing, lora_target_regex


def _batch(vlm, image_tokens: int, projector_in: int):
    """Two samples of different lengths (the second padded), an image in the first, replies supervised."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (2, 40), generator=generator)
    ids[ids == vlm.config.image_token_id] = 6
    ids[0, 2:2 + image_tokens] = vlm.config.image_token_id
    attention = torch.ones_like(ids)
    attention[1, 33:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, 30:34] = ids[0, 30:34]  # a short reply after the image and the prompt
    labels[1, 10:14] = ids[1, 10:14]  # two replies in a text-only conversation
    labels[1, 20:31] = ids[1, 20:31]
    features = torch.randn(1, image_tokens, projector_in, generator=generator)
    return ids, attention, labels, features


def _trainable_vlm(path, checkpointing: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    vlm = LlavaForConditionalGeneration.from_pretrained(path)
    vlm.config.use_cache = False
    for p in vlm.parameters():
        p.requires_grad_(False)
    if checkpointing:
        enable_checkpointing(vlm)
    vlm = get_peft_model(vlm, LoraConfig(r=4, target_modules=lora_target_regex(vlm, "family"))).get_base_model()
    for p in vlm.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    with torch.no_grad():  # LoRA's B starts at zero: give it values, so its gradient depends on the loss's path
        for name, p in vlm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return vlm.train()


def _loss_and_grads(vlm, batch):
    ids, attention, labels, features = batch
    vlm.zero_grad(set_to_none=True)
    loss = CachedFeatureVLM.make(vlm)(ids, attention, labels, features).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in vlm.named_parameters() if p.requires_grad}


def _reference(vlm, batch):
    """transformers' own path: the logits of every position, its causal LM loss."""
    ids, attention, labels, features = batch
    vlm.zero_grad(set_to_none=True)
    embeds = vlm.get_input_embeddings()(ids)
    projected = vlm.model.multi_modal_projector(features)
    mask = (ids == vlm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype))
    out = vlm(inputs_embeds=embeds, attention_mask=attention, labels=labels, use_cache=False)
    assert out.logits.shape[1] == ids.shape[1]  # every position went through the output layer
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in vlm.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("chunk_rows", [4096, 3])
def test_the_supervised_loss_and_its_gradients_are_transformers(transplanted, monkeypatch, checkpointing, chunk_rows):
    monkeypatch.setattr(training_model, "LOSS_CHUNK_ROWS", chunk_rows)  # 3 rows: 19 supervised rows in 7 chunks
    vlm = _trainable_vlm(transplanted["mistral"], checkpointing)
    config = vlm.config
    image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    batch = _batch(vlm, image_tokens, config.vision_config.hidden_size)
    loss, grads = _loss_and_grads(vlm, batch)
    expected_loss, expected_grads = _reference(vlm, batch)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    assert grads.keys() == expected_grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)
        assert grad.abs().sum() > 0, name  # every trained weight receives a gradient


def test_the_loss_is_a_mean_over_the_supervised_tokens(transplanted):
    """A hand-made check, independent of transformers: the loss of one supervised token is minus the log of
    the probability the output layer gives it at the position before."""
    vlm = _trainable_vlm(transplanted["mistral"], checkpointing=False)
    hidden = torch.randn(1, 5, vlm.config.text_config.hidden_size)
    labels = torch.tensor([[IGNORE, IGNORE, 17, IGNORE, IGNORE]])
    head = vlm.get_output_embeddings()
    loss = training_model.supervised_loss(head, hidden, labels)
    probabilities = torch.softmax(head(hidden[0, 1]).double(), -1)
    assert loss.item() == pytest.approx(-probabilities[17].log().item(), rel=1e-5)
    nothing = training_model.supervised_loss(head, hidden.requires_grad_(), torch.full_like(labels, IGNORE))
    assert nothing.item() == 0.0 and nothing.requires_grad
