"""The test kit's checkpoints are real Hugging Face checkpoints with the differences the tests rely on."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration


def test_vlm_loads_and_generates_from_an_image(kit):
    model = LlavaForConditionalGeneration.from_pretrained(kit.vlm)
    processor = AutoProcessor.from_pretrained(kit.vlm)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (40, 30), (200, 10, 10)), text=prompt, return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == model.config.image_seq_length == 16
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_llms_differ_in_the_ways_the_tests_need(kit):
    qwen = AutoTokenizer.from_pretrained(kit.qwen2)
    mistral = AutoTokenizer.from_pretrained(kit.mistral)
    assert mistral.pad_token is None
    assert qwen.pad_token == "<|endoftext|>"
    chat = [{"role": "user", "content": "hi"}]
    assert qwen.apply_chat_template(chat, tokenize=False).startswith("<|im_start|>user")
    assert mistral.apply_chat_template(chat, tokenize=False).startswith("<s>[INST]")
    assert qwen.get_vocab() != mistral.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(kit.qwen2)
    assert model.dtype == torch.bfloat16
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not AutoModelForCausalLM.from_pretrained(kit.mistral).config.tie_word_embeddings
