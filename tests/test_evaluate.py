"""``backbone-swap eval``: batched answers equal one-at-a-time answers, confidences are probabilities,
files resume, probes are saved."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from backbone_swap.demo import scenes
from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.evaluator import Evaluator
from backbone_swap.evaluate.runner import evaluate, evaluate_task
from backbone_swap.evaluate.suite import load_suite


@pytest.fixture(scope="module")
def evaluated(transplanted, suite_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "mistral"
    return evaluate(transplanted["mistral"], load_suite(suite_file), out, batch_size=5, show_progress=False)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_item_with_the_documented_fields(evaluated):
    colour = _lines(evaluated.output / "colour.jsonl")
    assert len(colour) == 12 and len({line["id"] for line in colour}) == 12
    for line in colour:
        assert {"id", "prediction", "reference", "correct", "confidence"} <= set(line)
        assert 0.0 <= line["confidence"] <= 1.0
    where = _lines(evaluated.output / "where.jsonl")
    assert all("valid" in line for line in where)


def test_batched_answers_equal_one_at_a_time_generate(transplanted, suite_file, evaluated):
    suite = load_suite(suite_file)
    task = suite.task("colour")
    single = Evaluator(transplanted["mistral"], batch_size=1)
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import read_items

    batched = {line["id"]: line for line in _lines(evaluated.output / "colour.jsonl")}
    for item in read_items(task)[:6]:
        [(text, confidence)] = single.generate([_load_image(task, item)], [item["question"]], task)
        assert text == batched[item["id"]]["prediction"]
        assert confidence == pytest.approx(batched[item["id"]]["confidence"], rel=1e-4)


def test_confidence_is_the_mean_log_probability_of_the_answer(transplanted, suite_file):
    """Independently: score the generated answer by a teacher-forced forward pass."""
    suite = load_suite(suite_file)
    task = suite.task("colour")
    evaluator = Evaluator(transplanted["mistral"], batch_size=1)
    from backbone_swap.evaluate.evaluator import _messages
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import read_items

    item = read_items(task)[0]
    image = _load_image(task, item)
    prompt = evaluator.processor.apply_chat_template(_messages(item["question"], ""), add_generation_prompt=True)
    inputs = evaluator.processor(images=[image], text=[prompt], add_special_tokens=False, return_tensors="pt")
    out = evaluator.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    with torch.no_grad():
        logits = evaluator.model(
            input_ids=out, attention_mask=torch.ones_like(out), pixel_values=inputs["pixel_values"]
        ).logits
    logprobs = torch.log_softmax(logits[0].float(), -1)
    start = inputs["input_ids"].shape[1]
    chosen = [float(logprobs[start - 1 + i, t]) for i, t in enumerate(new.tolist())]
    stop = next((i + 1 for i, t in enumerate(new.tolist()) if t in evaluator.stop_ids), len(chosen))
    expected = math.exp(sum(chosen[:stop]) / stop)
    [(_, confidence)] = evaluator.generate([image], [item["question"]], task)
    assert confidence == pytest.approx(expected, rel=1e-3)


def test_multiple_choice_probabilities_sum_to_one(evaluated):
    for line in _lines(evaluated.output / "choice.jsonl"):
        assert sum(line["probabilities"]) == pytest.approx(1.0)
        assert line["confidence"] == pytest.approx(max(line["probabilities"]))
        assert line["prediction"] in scenes.COLOURS


def test_resume_skips_finished_items_and_repairs_a_cut_line(transplanted, suite_file, evaluated, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    full = (evaluated.output / "colour.jsonl").read_text().splitlines()
    (out / "colour.jsonl").write_text("\n".join(full[:5]) + "\n" + full[5][:10])
    suite = load_suite(suite_file)
    evaluator = Evaluator(transplanted["mistral"], batch_size=5)
    answered = []
    evaluate_task(evaluator, suite.task("colour"), out, on_items=answered.append)
    assert sum(answered) == 7
    assert sorted(_lines(out / "colour.jsonl"), key=lambda x: x["id"]) == sorted(
        _lines(evaluated.output / "colour.jsonl"), key=lambda x: x["id"]
    )


def test_probe_states_are_saved(evaluated, transplanted):
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(transplanted["mistral"]).text_config.hidden_size
    states = load_file(evaluated.output / "probes" / "colour.safetensors")
    assert set(states) == {"clean", "noise", "paraphrase"}
    assert all(v.shape == (3, hidden) for v in states.values())
    assert not torch.equal(states["clean"], states["noise"])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tasks: []\n", "tasks must be a non-empty list"),
        ("tasks:\n  - {name: a, type: essay, needs: perception, data: x.jsonl}\n", "tasks[0].type"),
        ("tasks:\n  - {name: a, type: short_answer, needs: vibes, data: x.jsonl}\n", "tasks[0].needs"),
        ("tasks:\n  - {name: a, type: structured, needs: format, data: x.jsonl}\n", "tasks[0].format"),
        ("tasks:\n  - {name: a, type: short_answer, needs: format, data: x.jsonl, colour: 1}\n", "tasks[0].colour"),
        ("bogus: 1\ntasks: []\n", "bogus"),
        ("tasks:\n  - {name: a, type: short_answer, needs: format, data: x.jsonl, expect: better}\n",
         "tasks[0].expect must be one of upgrade, keep, no clear difference, complementary, only A, only B"),
    ],
)
def test_bad_suites_name_the_key(tmp_path, text, words):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(BackboneSwapError) as error:
        load_suite(path)
    assert words in str(error.value)


@pytest.mark.parametrize("text", ["", "\n\n", "[]"])
def test_a_task_without_records_is_refused(tmp_path, text):
    """An empty data file used to pass, then crash eval (stacking no probe states) and compare (statistics
    of zero questions) with tracebacks."""
    from backbone_swap.evaluate.suite import read_items

    (tmp_path / "x.jsonl").write_text(text)
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: a, type: short_answer, needs: format, data: x.jsonl}\n")
    with pytest.raises(BackboneSwapError, match="holds no records"):
        read_items(load_suite(tmp_path / "s.yaml").task("a"))


def test_broken_logits_stop_eval_with_a_message(transplanted, suite_file, tmp_path):
    """NaN logits (float16 overflow, here a NaN output layer) used to end eval in a ValueError traceback from
    the multiple-choice scorer, and to give generated answers a confidence from whatever tokens stayed finite."""
    evaluator = Evaluator(transplanted["mistral"], batch_size=4)
    with torch.no_grad():
        evaluator.model.lm_head.weight.fill_(math.nan)
    suite = load_suite(suite_file)
    for task, words in (("choice", "item '?[^ ]+'?: the model gave its options .*NaN or infinite"),
                        ("colour", "scores for its answer to .* are NaN or infinite")):
        (tmp_path / task).mkdir()
        with pytest.raises(BackboneSwapError, match=words):
            evaluate_task(evaluator, suite.task(task), tmp_path / task)
        assert not (tmp_path / task / f"{task}.jsonl").read_text(), "no answer is written from broken logits"


def test_prompts_carry_one_bos_as_in_training(transplanted, suite_file):
    from backbone_swap.evaluate.evaluator import _messages
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import read_items

    task = load_suite(suite_file).task("colour")
    evaluator = Evaluator(transplanted["mistral"], batch_size=2)
    items = read_items(task)[:2]
    prompts = [evaluator.processor.apply_chat_template(_messages(i["question"], ""), add_generation_prompt=True)
               for i in items]
    inputs = evaluator._inputs([_load_image(task, i) for i in items], prompts)
    bos = evaluator.tokenizer.bos_token_id
    assert prompts[0].startswith(evaluator.tokenizer.bos_token)
    assert (inputs["input_ids"] == bos).sum(dim=1).tolist() == [1, 1]


def test_generation_stops_at_the_end_of_turn_of_a_base_llm(transplanted):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(transplanted["qwen2"])
    eos = GenerationConfig.from_pretrained(transplanted["qwen2"]).eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos and tok.eos_token_id in eos
    assert tok.convert_tokens_to_ids("<|im_end|>") in Evaluator(transplanted["qwen2"]).stop_ids


def test_answers_of_another_model_are_not_reused(transplanted, suite_file, evaluated):
    with pytest.raises(BackboneSwapError, match="another model or suite"):
        evaluate(transplanted["qwen2"], load_suite(suite_file), evaluated.output, show_progress=False)


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_option_scores_are_the_log_likelihood_of_the_reply_as_trained(transplanted, suite_file, llm):
    """Independently: tokenise the whole conversation as the trainer does and sum the supervised log-probs."""
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import read_items
    from backbone_swap.training.data import IGNORE, to_messages, tokenize
    from backbone_swap.training.features import preprocess

    task = load_suite(suite_file).task("choice")
    evaluator = Evaluator(transplanted[llm])
    item = read_items(task)[0]
    image = _load_image(task, item)
    choices = [str(c) for c in item["choices"]]
    scores = evaluator.option_logprobs(image, item["question"], choices, task)
    tok, model = evaluator.tokenizer, evaluator.model
    for choice, score in zip(choices, scores, strict=True):
        messages = to_messages([{"from": "human", "value": "<image>\n" + item["question"]},
                                {"from": "gpt", "value": choice}], True)
        ids, labels, _ = tokenize(tok, messages, image_token_id=model.config.image_token_id,
                                  image_tokens=model.config.image_seq_length, end_of_turn=evaluator.end_of_turn)
        pixels = preprocess([image], evaluator.processor.image_processor, "resize")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        expected = sum(float(logprobs[i - 1, t]) for i, t in enumerate(labels) if t != IGNORE)
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_answers_left_by_a_stopped_multi_process_run_are_kept(transplanted, suite_file, evaluated, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    full = (evaluated.output / "colour.jsonl").read_text().splitlines()
    (out / ".colour.rank1.jsonl").write_text("\n".join(full[:5]) + "\n")
    evaluate(transplanted["mistral"], load_suite(suite_file), out, batch_size=5, probes=False, show_progress=False)
    lines = (out / "colour.jsonl").read_text().splitlines()
    assert len(lines) == 12 and lines[:5] == full[:5]
    assert not list(out.glob(".*.rank*.jsonl"))


def test_the_dtype_is_recorded_and_a_folder_refuses_to_mix_dtypes(transplanted, suite_file, evaluated, tmp_path):
    assert (evaluated.manifest["dtype"], evaluated.manifest["device"]) == ("float32", "cpu")
    with pytest.raises(BackboneSwapError, match="computed in float32.*--dtype float32"):
        evaluate(transplanted["mistral"], load_suite(suite_file), evaluated.output, dtype="bfloat16",
                 show_progress=False)
    with pytest.raises(BackboneSwapError, match="--dtype must be one of float32, bfloat16, float16"):
        evaluate(transplanted["mistral"], load_suite(suite_file), tmp_path / "x", dtype="float8", show_progress=False)
    assert not (tmp_path / "x").exists()


def test_two_sides_evaluated_in_different_dtypes_are_warned_about(transplanted, suite_file, evaluated, tmp_path):
    from backbone_swap.verdict.compare import confounds

    half = evaluate(transplanted["mistral"], load_suite(suite_file), tmp_path / "bf16", dtype="bfloat16",
                    probes=False, show_progress=False)
    assert half.manifest["dtype"] == "bfloat16"
    assert Evaluator(transplanted["mistral"], dtype="bfloat16").model.dtype == torch.bfloat16
    model = transplanted["mistral"]
    warned = confounds(model, model, (evaluated.output, half.output))
    assert any("A was evaluated in float32 and B in bfloat16" in w for w in warned), warned
    assert not any("evaluated in" in w for w in confounds(model, model, (evaluated.output, evaluated.output)))


def test_a_folder_of_other_files_is_never_written_into(transplanted, suite_file, tmp_path, digest):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    before = digest(out)
    with pytest.raises(BackboneSwapError, match="holds other files, not evaluation results"):
        evaluate(transplanted["mistral"], load_suite(suite_file), out, show_progress=False)
    assert digest(out) == before


def test_a_question_without_an_image_is_scored_as_training_tokenises_a_text_only_sample(transplanted, tmp_path):
    """Independently: a text-only conversation tokenised as the trainer does, no pixels; generation runs too."""
    from backbone_swap.training.data import IGNORE, to_messages, tokenize

    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: t, type: multiple_choice, needs: reasoning, data: t.jsonl}\n")
    (tmp_path / "t.jsonl").write_text('{"id": "1", "image": null, "question": "Which is wet?", "answer": "rain", '
                                      '"choices": ["rain", "sand"]}\n')
    task = load_suite(tmp_path / "s.yaml").task("t")
    evaluator = Evaluator(transplanted["mistral"])
    scores = evaluator.option_logprobs(None, "Which is wet?", ["rain", "sand"], task)
    tok, model = evaluator.tokenizer, evaluator.model
    for choice, score in zip(["rain", "sand"], scores, strict=True):
        messages = to_messages([{"from": "human", "value": "Which is wet?"}, {"from": "gpt", "value": choice}], False)
        ids, labels, _ = tokenize(tok, messages, image_token_id=model.config.image_token_id,
                                  image_tokens=model.config.image_seq_length, end_of_turn=evaluator.end_of_turn)
        assert model.config.image_token_id not in ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        expected = sum(float(logprobs[i - 1, t]) for i, t in enumerate(labels) if t != IGNORE)
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)
    [(text, confidence)] = evaluator.generate([None], ["Which is wet?"], task)
    assert isinstance(text, str) and 0.0 <= confidence <= 1.0
    (tmp_path / "out").mkdir()
    evaluate_task(evaluator, task, tmp_path / "out")
    [line] = _lines(tmp_path / "out" / "t.jsonl")
    assert line["prediction"] in ("rain", "sand") and sum(line["probabilities"]) == pytest.approx(1.0)
