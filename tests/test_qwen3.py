"""Qwen3: a chat template that does not render replies incrementally still gets exact assistant labels."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from backbone_swap.checkpoints.templates import end_of_turn
from backbone_swap.demo import tiny_models as tm
from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.data import IGNORE, build_dataset
from backbone_swap.transplant import transplant

TWO_TURNS = [
    {"from": "human", "value": "<image>\nwhat colour is the shape?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "and which shape is it?"},
    {"from": "gpt", "value": "a circle"},
]


@pytest.fixture(scope="module")
def qwen3(kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    llm = tm.build_llm(root / "qwen3", tm.qwen3_spec(seed=8))
    return {"llm": llm, "vlm": transplant(kit.vlm, llm, root / "llava-qwen3", hash_inputs=False).output}


def test_the_kit_carries_qwen3s_real_non_incremental_template(qwen3):
    tok = AutoTokenizer.from_pretrained(qwen3["llm"])
    assert tok.chat_template == tm.QWEN3_TEMPLATE
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a circle"}]
    whole = tok.apply_chat_template(chat, tokenize=False)
    through_first = tok.apply_chat_template(chat[:2], tokenize=False)
    assert whole == ("<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nq2"
                     "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\na circle<|im_end|>\n")
    assert not whole.startswith(through_first)  # the first reply, rendered last, carries an empty think block


def test_multi_turn_labels_are_each_reply_as_the_template_renders_it(qwen3, tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": 1, "image": "a.png", "conversations": TWO_TURNS}) + "\n")
    tok = AutoTokenizer.from_pretrained(qwen3["vlm"])
    eot = end_of_turn(tok)
    assert eot == "<|im_end|>"
    dataset = build_dataset(data, tok, image_root=root, image_token="<image>", image_tokens=16, max_length=256,
                            end_of_turn=eot)
    sample = dataset.samples[0]
    eot_id = tok.convert_tokens_to_ids(eot)
    # independently: the earlier reply bare, the last one after its empty think block, each with the end of turn
    expected = (tok("red", add_special_tokens=False)["input_ids"] + [eot_id]
                + tok("<think>\n\n</think>\n\na circle", add_special_tokens=False)["input_ids"] + [eot_id])
    assert [t for t in sample.labels if t != IGNORE] == expected
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (IGNORE, token)
    # nothing of the user turns or the assistant headers is learned
    prompt_ids = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert not set(prompt_ids) & {t for t in sample.labels if t != IGNORE} - set(expected)


def test_a_template_that_drops_the_end_of_turn_is_not_mis_masked(qwen3, tmp_path):
    """When a reply is not followed by the end of turn, the span would run into the next turn: refused."""
    tok = AutoTokenizer.from_pretrained(qwen3["vlm"])
    tok.chat_template = tm.QWEN3_TEMPLATE.replace("{{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}",
                                                  "{%- if loop.last %}{{- '<|im_end|>\\n' }}{%- endif %}\n"
                                                  "    {%- elif message.role == \"tool\" %}")
    assert tok.chat_template != tm.QWEN3_TEMPLATE
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "conversations": TWO_TURNS[2:] + TWO_TURNS[2:]}) + "\n")
    with pytest.raises(BackboneSwapError, match="not followed by the end-of-turn token"):
        build_dataset(data, tok, image_root=None, image_token="<image>", image_tokens=16, max_length=256,
                      end_of_turn="<|im_end|>")


def test_qwen3_transplant_loads_and_generates(qwen3):
    model, info = LlavaForConditionalGeneration.from_pretrained(qwen3["vlm"], output_loading_info=True)
    assert not any(info.values()), info
    manifest = json.loads((qwen3["vlm"] / "manifest.json").read_text())
    assert manifest["changes"]["end_of_turn"] == "<|im_end|>" and manifest["llm"]["family"] == "qwen3"
    processor = AutoProcessor.from_pretrained(qwen3["vlm"])
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n<image>\nwhat colour is it<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=Image.new("RGB", (40, 40)), text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.slow
def test_qwen3_trains_on_multi_turn_samples(qwen3, colour_data, tmp_path):
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.training.train import train

    records = [json.loads(line) for line in colour_data["train"].read_text().splitlines()[:16]]
    for record in records:
        record["conversations"] = record["conversations"] + [
            {"from": "human", "value": "say it again"}, {"from": "gpt", "value": record["answer"]}]
    data = tmp_path / "two-turn.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=2", "stage2.max_steps=2"])
    result = train(qwen3["vlm"], recipe=recipe, data=data, image_root=colour_data["root"], output=tmp_path / "run",
                   feature_cache=tmp_path / "cache", show_progress=False)
    stats = result.manifest["data"]
    assert stats["samples"] == 16 and stats["skipped"] == 0 and stats["end_of_turn"] == "<|im_end|>"
    assert stats["supervised_tokens_min"] >= 2 * 2  # two replies, each with its end of turn
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    merged = tmp_path / "run" / "final" / "merged"
    _, info = LlavaForConditionalGeneration.from_pretrained(merged, output_loading_info=True)
    assert not any(info.values())


def test_evaluation_reads_the_answer_after_the_think_block(qwen3, kit):
    from backbone_swap.checkpoints.templates import reply_prefix
    from backbone_swap.evaluate.evaluator import answer_text

    tok = AutoTokenizer.from_pretrained(qwen3["vlm"])
    prefix = reply_prefix(tok)
    assert prefix == "<think>\n\n</think>\n\n"
    generated = tok("<think>\n\n</think>\n\nred", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert answer_text(tok.decode(generated, skip_special_tokens=True), prefix) == "red"
    assert reply_prefix(AutoTokenizer.from_pretrained(kit.qwen2)) == ""
    assert answer_text(" red ", "") == "red"
