"""Checkpoints of the original LLaVA training code: converted on the way in, the tower given with --vision-tower."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
from weights import read_tensors, tensor_sha

from backbone_swap.demo import tiny_models as tm
from backbone_swap.transplant import transplant


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """An original LLaVA-1.5 style folder (Llama, hidden 48, mm_projector mlp2x_gelu) and its CLIP tower folder."""
    root = tmp_path_factory.mktemp("original")
    return {
        "vlm": tm.build_original_llava(root / "llava-v1.5-tiny", seed=6),
        "tower": tm.build_vision_tower(root / "clip-vit-tiny", seed=7),
        "root": root,
    }


def test_tower_is_bit_identical_and_the_projector_converted(original, kit, cli, tmp_path, digest):
    before = {p: digest(p) for p in (original["vlm"], original["tower"])}
    out = tmp_path / "out"
    result = cli("transplant", "--vlm", original["vlm"], "--vision-tower", original["tower"], "--llm", kit.llama48,
                 "-o", out, "--projector", "reuse")
    assert result.code == 0, result.err
    assert {p: digest(p) for p in before} == before
    tower, old, new = read_tensors(original["tower"]), read_tensors(original["vlm"]), read_tensors(out)
    assert all(k.startswith("vision_model.") for k in tower)
    for name, tensor in tower.items():
        assert tensor_sha(new["model.vision_tower." + name.removeprefix("vision_model.")]) == tensor_sha(tensor), name
    for source, target in (("0", "linear_1"), ("2", "linear_2")):
        for leaf in ("weight", "bias"):
            assert tensor_sha(new[f"model.multi_modal_projector.{target}.{leaf}"]) == tensor_sha(
                old[f"model.mm_projector.{source}.{leaf}"])
    manifest = json.loads((out / "manifest.json").read_text())
    converted = manifest["changes"]["converted_from_original_llava"]
    assert converted["settings"]["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert "linear_1" in converted["projector"]
    expected = hashlib.sha256((original["tower"] / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["inputs"]["vision_tower"]["weights"] == {"model.safetensors": expected}
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.parametrize(("model_type", "select_feature", "strategy", "tokens"),
                         [("llava_llama", "patch", "default", 16), ("llava", "cls_patch", "full", 17)])
def test_settings_are_mapped_and_the_result_generates(original, kit, tmp_path, model_type, select_feature, strategy,
                                                       tokens):
    vlm = tm.build_original_llava(tmp_path / "vlm", select_feature=select_feature, select_layer=-1,
                                  model_type=model_type, seed=6)
    out = transplant(vlm, kit.mistral, tmp_path / "out", vision_tower=original["tower"], hash_inputs=False).output
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.vision_feature_layer == -1
    assert model.config.vision_feature_select_strategy == strategy
    processor = AutoProcessor.from_pretrained(out)
    tower_processor = AutoProcessor.from_pretrained(original["tower"])
    image = Image.new("RGB", (50, 30), (10, 200, 10))
    assert torch.equal(processor.image_processor(image, return_tensors="pt")["pixel_values"],
                       tower_processor(images=image, return_tensors="pt")["pixel_values"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it"}]}]
    inputs = processor(images=image, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                       return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == tokens
    out_ids = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 2


def test_a_new_projector_is_sized_for_the_new_llm(original, kit, tmp_path):
    out = transplant(original["vlm"], kit.qwen2, tmp_path / "out", vision_tower=original["tower"],
                     hash_inputs=False).output
    new = read_tensors(out)
    assert new["model.multi_modal_projector.linear_1.weight"].shape == (64, 32)
    assert not any("mm_projector" in k for k in new)
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())


def test_missing_vision_tower_is_one_clear_error(original, kit, cli, tmp_path, digest):
    before = digest(original["vlm"])
    result = cli("transplant", "--vlm", original["vlm"], "--llm", kit.mistral, "-o", tmp_path / "out")
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "original LLaVA training code" in result.err and "--vision-tower" in result.err
    assert "openai/clip-vit-large-patch14-336" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists() and digest(original["vlm"]) == before


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("tower for a llava folder", "carries its own vision tower"),
        ("tower of another width", "mm_hidden_size 32"),
        ("not a tower", "not a vision tower"),
        ("tuned tower inside", "vision tower weights of its own"),
        ("anyres", "LLaVA-NeXT"),
        ("unknown projector feature", "mm_vision_select_feature"),
    ],
)
def test_mismatched_inputs_are_refused(original, kit, cli, tmp_path, copy_of, case, words):
    vlm, tower = original["vlm"], original["tower"]
    if case == "tower for a llava folder":
        vlm = kit.vlm
    elif case == "tower of another width":
        tower = tm.build_vision_tower(tmp_path / "wide", tm.VisionSpec(hidden_size=24))
    elif case == "not a tower":
        tower = kit.mistral
    else:
        vlm = copy_of(original["vlm"], "vlm")
        config = json.loads((vlm / "config.json").read_text())
        if case == "tuned tower inside":
            from safetensors.torch import load_file, save_file

            weights = load_file(vlm / "model.safetensors")
            weights["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(32)
            save_file(weights, vlm / "model.safetensors", metadata={"format": "pt"})
        elif case == "anyres":
            config["image_aspect_ratio"] = "anyres"
        else:
            config["mm_vision_select_feature"] = "cls"
        (vlm / "config.json").write_text(json.dumps(config))
    result = cli("transplant", "--vlm", vlm, "--vision-tower", tower, "--llm", kit.mistral, "-o", tmp_path / "out")
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert words in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_inspect_reads_an_original_checkpoint(original, kit, cli):
    alone = cli("inspect", original["vlm"], "--json")
    assert alone.code == 0, alone.err
    a = json.loads(alone.out)
    assert a["kind"] == "vlm" and a["vlm_format"] == "llava_original" and a["family"] == "llama"
    assert a["architecture"] == "LlavaLlamaForCausalLM" and a["vision"] is None
    assert a["projector"]["type"] == "mlp2x_gelu"
    assert (a["projector"]["in_features"], a["projector"]["out_features"]) == (32, 48)
    assert a["settings"]["mm_vision_select_feature"] == "patch" and a["settings"]["image_aspect_ratio"] == "pad"
    assert any("--vision-tower" in note for note in a["notes"])
    with_tower = json.loads(cli("inspect", original["vlm"], "--vision-tower", original["tower"], "--json").out)
    v = with_tower["vision"]
    assert (v["model_type"], v["hidden_size"], v["feature_layer"], v["select_strategy"]) == (
        "clip_vision_model", 32, -2, "default")
    assert with_tower["parameters"]["vision_tower"] == sum(t.numel() for t in read_tensors(original["tower"]).values())
    assert with_tower["parameters"]["projector"] == 32 * 48 + 48 + 48 * 48 + 48
    compat = json.loads(cli("inspect", original["vlm"], "--vision-tower", original["tower"], "--llm", kit.llama48,
                            "--json").out)["transplant"]
    assert compat["problems"] == [] and compat["reuse_projector_possible"] is True
    table = cli("inspect", original["vlm"], "--llm", kit.mistral)
    assert table.code == 0 and "--vision-tower" in table.out


def test_train_eval_and_upgrade_refuse_an_original_checkpoint(original, kit, cli, colour_data, suite_file, tmp_path):
    train = cli("train", original["vlm"], "--recipe", "tiny-cpu", "--data", colour_data["train"], "--image-root",
                colour_data["root"], "-o", tmp_path / "run")
    assert train.code == 1 and "transplant" in train.err and train.err.count("\n") == 1, train.err
    evaluated = cli("eval", original["vlm"], "--suite", suite_file, "-o", tmp_path / "ev")
    assert evaluated.code == 1 and "convert_llava_weights_to_hf" in evaluated.err, evaluated.err
    upgraded = cli("upgrade", "--vlm", original["vlm"], "--llm", kit.mistral, "--recipe", "tiny-cpu", "--data",
                   colour_data["train"], "--image-root", colour_data["root"], "--suite", suite_file, "-o",
                   tmp_path / "up")
    assert upgraded.code == 1 and "original LLaVA training code" in upgraded.err, upgraded.err
    assert "--baseline retrain" in upgraded.err and upgraded.err.count("\n") == 1, upgraded.err
    assert not any((tmp_path / name).exists() for name in ("run", "ev", "up"))


@pytest.mark.slow
def test_upgrade_rebuilds_the_old_side_of_an_original_checkpoint(original, kit, cli, colour_data, suite_file,
                                                                  tmp_path, digest):
    """Its tower and projector are used on both LLMs; each side is trained with the same recipe and compared."""
    before = digest(original["vlm"])
    out = tmp_path / "up"
    result = cli("upgrade", "--vlm", original["vlm"], "--vision-tower", original["tower"], "--llm", kit.mistral,
                 "--baseline", "retrain", "--old-llm", kit.llama48, "--recipe", "tiny-cpu", "--data",
                 colour_data["train"], "--image-root", colour_data["root"], "--suite", suite_file, "-o", out,
                 "--resamples", "200", "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=3", "--device", "cpu")
    assert result.code == 0, result.err
    for side in ("old", "new"):
        assert json.loads((out / "eval" / side / "manifest.json").read_text())["device"] == "cpu"
    assert digest(original["vlm"]) == before
    tower = read_tensors(original["tower"])
    for side in (out / "transplant", out / "baseline" / "transplant"):
        built = read_tensors(side)
        for name, tensor in tower.items():
            key = "model.vision_tower." + name.removeprefix("vision_model.")
            assert tensor_sha(built[key]) == tensor_sha(tensor), (side, name)
    report = json.loads((out / "compare" / "report.json").read_text())
    assert report["meta"]["baseline"] == "retrain" and len(report["tasks"]) >= 1
