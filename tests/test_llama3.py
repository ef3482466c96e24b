"""Llama 3 Instruct as the new backbone: its real chat template (BOS written by the template, a system block
dated from the clock, ``<|eot_id|>`` ends a turn), no pad token; transplanted, trained and evaluated."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from backbone_swap.checkpoints.templates import TEMPLATE_VARIABLES, end_of_turn
from backbone_swap.demo import tiny_models as tm
from backbone_swap.training.data import IGNORE, build_dataset
from backbone_swap.transplant import transplant

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama3(kit, tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3")
    llm = tm.build_llm(root / "llama3", tm.llama3_spec(seed=9))
    return {"llm": llm, "vlm": transplant(kit.vlm, llm, root / "llava-llama3", hash_inputs=False).output}


def test_the_kit_carries_llama3s_real_template_which_dates_every_conversation(llama3):
    tok = AutoTokenizer.from_pretrained(llama3["llm"])
    assert tok.chat_template == tm.LLAMA3_TEMPLATE and tok.pad_token is None
    chat = [{"role": "user", "content": " q "}, {"role": "assistant", "content": "red"}]
    assert tok.apply_chat_template(chat, tokenize=False, date_string="1 Jan 2030") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 1 Jan 2030\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>")
    # without a date the template reads the clock: what training and evaluation must not depend on
    assert "Today Date: 26 Jul 2024" not in tok.apply_chat_template(chat, tokenize=False)


def test_transplant_adds_a_pad_token_that_is_not_the_end_of_turn(llama3):
    tok = AutoTokenizer.from_pretrained(llama3["vlm"])
    assert end_of_turn(tok) == "<|eot_id|>"
    assert tok.pad_token is not None and tok.pad_token not in {"<|eot_id|>", "<|end_of_text|>"}
    config = json.loads((llama3["vlm"] / "config.json").read_text())
    assert config["text_config"]["pad_token_id"] == tok.pad_token_id


def test_samples_have_one_bos_a_fixed_date_and_the_end_of_turn_learned(llama3, colour_data):
    tok = AutoTokenizer.from_pretrained(llama3["vlm"])
    dataset = build_dataset(colour_data["train"], tok, image_root=colour_data["root"], image_token="<image>",
                            image_tokens=16, max_length=512, end_of_turn="<|eot_id|>")
    record = json.loads(colour_data["train"].read_text().splitlines()[0])
    sample = dataset.samples[0]
    assert sample.input_ids.count(tok.bos_token_id) == 1 and sample.input_ids[0] == tok.bos_token_id
    text = tok.decode(sample.input_ids)
    assert f"Today Date: {TEMPLATE_VARIABLES['date_string']}" in text
    # independently: the reply's tokens and the end of turn, nothing else
    reply = next(t["value"] for t in record["conversations"] if t["from"] == "gpt")
    expected = tok(reply.strip(), add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|eot_id|>")]
    assert [t for t in sample.labels if t != IGNORE] == expected


def test_train_and_eval_stop_at_the_end_of_turn(llama3, colour_data, suite_file, tmp_path):
    from backbone_swap.evaluate.evaluator import Evaluator
    from backbone_swap.evaluate.runner import evaluate
    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.training.train import train

    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=4", "stage2.max_steps=30"])
    result = train(llama3["vlm"], recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                   output=tmp_path / "run", feature_cache=tmp_path / "cache", show_progress=False)
    assert result.manifest["data"]["end_of_turn"] == "<|eot_id|>"
    merged = result.output / "final" / "merged"
    evaluator = Evaluator(merged, batch_size=4)
    eot = evaluator.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in evaluator.stop_ids
    prompt = evaluator.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the shape?"}]}],
        add_generation_prompt=True, **TEMPLATE_VARIABLES)
    assert prompt.count("<|begin_of_text|>") == 1 and "Today Date: 26 Jul 2024" in prompt
    out = evaluate(merged, load_suite(suite_file), tmp_path / "eval", batch_size=4, probes=False,
                   show_progress=False)
    answers = [json.loads(line) for line in (out.output / "colour.jsonl").read_text().splitlines()]
    assert answers and not any("<|" in a["prediction"] for a in answers)
    with torch.no_grad():  # the trained model ends its reply with the end of turn rather than running on
        inputs = evaluator._inputs([Image.new("RGB", (30, 30), (255, 0, 0))], [prompt])
        generated = evaluator.model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eot)
    tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
    assert eot in tokens and len(tokens) < 12


def test_only_templates_that_read_the_date_are_given_it():
    """A processor hands keywords its template does not read to its own __call__, with a warning each time."""
    from backbone_swap.checkpoints.templates import template_variables

    assert template_variables(tm.LLAMA3_TEMPLATE) == TEMPLATE_VARIABLES
    assert template_variables(tm.LLAVA_TEMPLATE) == {} and template_variables(None) == {}
    assert template_variables({"default": tm.LLAMA3_TEMPLATE}) == TEMPLATE_VARIABLES
