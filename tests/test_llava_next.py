"""A LLaVA-NeXT VLM as transplant input: the output stays LLaVA-NeXT, with the vision side kept bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration
from weights import read_tensors, tensor_sha

from backbone_swap.demo import tiny_models as tm
from backbone_swap.transplant import transplant

PINPOINTS = [[32, 64], [64, 32], [64, 64]]




def _tower(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 per vision tower tensor, by its name inside the tower, whatever the file's key layout."""
    return {k.split("vision_tower.", 1)[1].removeprefix("vision_model."): tensor_sha(v)
            for k, v in tensors.items() if "vision_tower." in k}


@pytest.fixture(scope="module")
def next_kit(kit, tmp_path_factory, digest):
    """A LLaVA-NeXT VLM (its own image grid) moved onto the kit's Mistral (new projector) and onto the Llama of
    the same hidden size (projector reused)."""
    root = tmp_path_factory.mktemp("next")
    vlm = tm.build_llava_next(root / "llava-next", grid_pinpoints=PINPOINTS, seed=4)
    before = digest(vlm)
    new = transplant(vlm, kit.mistral, root / "onto-mistral", seed=5).output
    reused = transplant(vlm, kit.llama48, root / "onto-llama48", projector="reuse", hash_inputs=False).output
    return {"vlm": vlm, "new": new, "reused": reused, "inputs_unchanged": digest(vlm) == before}


def test_next_vision_tower_and_settings_are_kept(next_kit):
    assert next_kit["inputs_unchanged"]
    old, new = read_tensors(next_kit["vlm"]), read_tensors(next_kit["new"])
    assert _tower(old) and _tower(new) == _tower(old)
    old_config = json.loads((next_kit["vlm"] / "config.json").read_text())
    config = json.loads((next_kit["new"] / "config.json").read_text())
    assert config["architectures"] == ["LlavaNextForConditionalGeneration"] and config["model_type"] == "llava_next"
    assert config["image_grid_pinpoints"] == old_config["image_grid_pinpoints"] == PINPOINTS
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "image_seq_length"):
        assert config[key] == old_config[key]
    old_proc = json.loads((next_kit["vlm"] / "processor_config.json").read_text())
    new_proc = json.loads((next_kit["new"] / "processor_config.json").read_text())
    assert new_proc["image_processor"] == old_proc["image_processor"]
    for key in ("processor_class", "patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
        assert new_proc[key] == old_proc[key]


def test_next_output_loads_and_generates_from_an_image(next_kit):
    folder = next_kit["new"]
    model, info = LlavaNextForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    processor = AutoProcessor.from_pretrained(folder)
    old_processor = AutoProcessor.from_pretrained(next_kit["vlm"])
    assert type(processor).__name__ == "LlavaNextProcessor"
    image = Image.new("RGB", (60, 28), (200, 30, 30))  # wide: tiled on the 32x64 grid point
    old_pixels = old_processor.image_processor(image, return_tensors="pt")
    pixels = processor.image_processor(image, return_tensors="pt")
    assert torch.equal(pixels["pixel_values"], old_pixels["pixel_values"])
    assert pixels["pixel_values"].shape[1] == 3  # the base image and two tiles
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) > model.config.image_seq_length
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_next_projector_and_image_newline_are_new_and_seeded(next_kit):
    out = read_tensors(next_kit["new"])
    assert out["model.multi_modal_projector.linear_1.weight"].shape == (40, 32)
    assert out["model.image_newline"].shape == (40,)  # the new LLM's hidden size: it follows the projector
    with torch.random.fork_rng():
        torch.manual_seed(5)
        first = torch.nn.Linear(32, 40)
        torch.nn.Linear(40, 40)
        newline = torch.randn(40) / 40 ** 0.5
    assert torch.equal(out["model.multi_modal_projector.linear_1.weight"], first.weight.detach())
    assert torch.equal(out["model.image_newline"], newline)
    manifest = json.loads((next_kit["new"] / "manifest.json").read_text())
    assert manifest["changes"]["llava_next"]["image_grid_pinpoints"] == PINPOINTS
    assert "seed 5" in manifest["changes"]["llava_next"]["image_newline"]


def test_next_projector_and_image_newline_are_copied_when_reused(next_kit):
    old, out = read_tensors(next_kit["vlm"]), read_tensors(next_kit["reused"])
    assert tensor_sha(out["model.image_newline"]) == tensor_sha(old["image_newline"])
    for name in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"):
        key = f"multi_modal_projector.{name}"
        assert tensor_sha(out[f"model.{key}"]) == tensor_sha(old[key])
    _, info = LlavaNextForConditionalGeneration.from_pretrained(next_kit["reused"], output_loading_info=True)
    assert not any(info.values())


def test_a_next_transplant_is_itself_read_as_next(next_kit, kit, tmp_path):
    """The output's own key layout (``model.image_newline``, ``model.vision_tower.*``) is read as input too."""
    again = transplant(next_kit["new"], kit.qwen2, tmp_path / "again", hash_inputs=False).output
    assert _tower(read_tensors(again)) == _tower(read_tensors(next_kit["vlm"]))
    _, info = LlavaNextForConditionalGeneration.from_pretrained(again, output_loading_info=True)
    assert not any(info.values())


def test_inspect_names_the_next_parts(next_kit, cli):
    result = cli("inspect", next_kit["vlm"], "--json")
    assert result.code == 0, result.err
    a = json.loads(result.out)
    model = LlavaNextForConditionalGeneration.from_pretrained(next_kit["vlm"])
    assert a["vlm_format"] == "llava_next" and a["architecture"] == "LlavaNextForConditionalGeneration"
    assert a["settings"]["image_grid_pinpoints"] == PINPOINTS
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    projector += model.model.image_newline.numel()
    assert a["parameters"]["projector"] == projector
    assert a["parameters"]["vision_tower"] == sum(p.numel() for p in model.model.vision_tower.parameters())


def test_training_a_next_model_is_refused_in_one_line(next_kit, cli, colour_data, tmp_path, digest):
    before = digest(next_kit["new"])
    result = cli("train", next_kit["new"], "--recipe", "tiny-cpu", "--data", colour_data["train"], "--image-root",
                 colour_data["root"], "-o", tmp_path / "run")
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "training LLaVA-NeXT is not supported yet" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists() and digest(next_kit["new"]) == before


def test_upgrading_a_next_model_is_refused_before_any_step(next_kit, kit, cli, colour_data, suite_file, tmp_path):
    result = cli("upgrade", "--vlm", next_kit["vlm"], "--llm", kit.mistral, "--recipe", "tiny-cpu", "--data",
                 colour_data["train"], "--image-root", colour_data["root"], "--suite", suite_file, "-o",
                 tmp_path / "run")
    assert result.code == 1 and "training LLaVA-NeXT is not supported yet" in result.err, result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_next_model_is_evaluated(next_kit, suite_file, tmp_path):
    from backbone_swap.evaluate.runner import evaluate
    from backbone_swap.evaluate.suite import load_suite, read_items

    suite = load_suite(str(suite_file))
    result = evaluate(next_kit["new"], suite, tmp_path / "ev", batch_size=4, device="cpu", show_progress=False)
    for task in suite.tasks:
        lines = [json.loads(line) for line in (tmp_path / "ev" / f"{task.name}.jsonl").read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == sorted(str(item["id"]) for item in read_items(task))
        assert all(0.0 <= line["confidence"] <= 1.0 for line in lines)
    assert (tmp_path / "ev" / "probes" / "colour.safetensors").is_file()
    assert result.manifest["step"] == "eval"


def test_the_llava_hf_next_key_layout_is_read(next_kit, kit, tmp_path):
    """llava-hf's LLaVA-NeXT files name the tower ``vision_tower.vision_model.*`` beside a top-level
    ``image_newline``."""
    import shutil

    from safetensors.torch import load_file, save_file

    vlm = tmp_path / "hub"
    shutil.copytree(next_kit["vlm"], vlm)
    weights = load_file(vlm / "model.safetensors")
    renamed = {("vision_tower.vision_model." + k.removeprefix("vision_tower.") if k.startswith("vision_tower.")
                else k): v for k, v in weights.items()}
    assert "image_newline" in renamed and any(k.startswith("vision_tower.vision_model.") for k in renamed)
    save_file(renamed, vlm / "model.safetensors", metadata={"format": "pt"})
    out = transplant(vlm, kit.llama48, tmp_path / "out", projector="reuse", hash_inputs=False).output
    new = read_tensors(out)
    assert _tower(new) == _tower(renamed)
    assert tensor_sha(new["model.image_newline"]) == tensor_sha(renamed["image_newline"])
    _, info = LlavaNextForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())


def test_next_answers_with_shared_prefixes_equal_whole_prompts(next_kit, suite_file):
    """Images of different shapes are tiled differently, so their prefixes differ in length: each question's
    answer, confidence, option scores and probe state as when its prompt runs whole and alone."""
    from backbone_swap.evaluate.evaluator import Evaluator, _image_sizes
    from backbone_swap.evaluate.suite import load_suite

    suite = load_suite(str(suite_file))
    short, choice = suite.task("colour"), suite.task("choice")
    images = [Image.new("RGB", size, colour) for size, colour in (((64, 32), "red"), ((32, 64), "blue"),
                                                                   ((64, 64), "green"))]
    questions = ["what colour is the shape?", "colour?", "name the colour of the shape in the picture, please"]
    asked = [(image, question) for image in images for question in questions]
    shared = Evaluator(next_kit["new"], batch_size=4, device="cpu")
    alone = Evaluator(next_kit["new"], batch_size=4, device="cpu", share_prefixes=False)
    got = shared.generate([image for image, _ in asked], [question for _, question in asked], short)
    assert shared._last_prefix is not None, "the questions were answered from their image's prefix"
    for (image, question), (text, confidence) in zip(asked, got, strict=True):
        [(expected, expected_confidence)] = alone.generate([image], [question], short)
        assert text == expected
        assert confidence == pytest.approx(expected_confidence, rel=1e-4, abs=1e-6)
    options = ["red", "green", "blue", "yellow"]
    for image, question in asked:
        assert shared.option_logprobs(image, question, options, choice) == pytest.approx(
            alone.option_logprobs(image, question, options, choice), rel=1e-4, abs=1e-4)
    states = shared.answer_states([image for image, _ in asked], [question for _, question in asked],
                                  ["red"] * len(asked), short)
    for row, (image, question) in enumerate(asked):
        prompt, reply = alone._prompt_and_reply(True, question, "red", short)
        base = alone._inputs([image], [prompt])
        ids = torch.cat([base["input_ids"], torch.tensor([reply])], dim=1)
        with torch.no_grad():
            out = alone.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=base["pixel_values"],
                              output_hidden_states=True, **_image_sizes([base]))
        expected = out.hidden_states[-1][0, -len(reply):].float().mean(dim=0)
        assert torch.allclose(states[row], expected, rtol=1e-4, atol=1e-5)
