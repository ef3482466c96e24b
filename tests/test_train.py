"""``backbone-swap train`` with the tiny recipe learns, changes only what it should, and resumes exactly."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration
from weights import read_tensors, tensor_sha

from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.recipe import apply_overrides, load_recipe, recipe_hash
from backbone_swap.training.train import train

pytestmark = pytest.mark.slow


def heldout_accuracy(model_dir, data) -> float:
    """Greedy answers to the held-out colour questions, compared with the reference word."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    records = [json.loads(line) for line in data["heldout"].read_text().splitlines()]
    right = 0
    for record in records:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": "what colour is the shape?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open(data["root"] / record["image"]), text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        right += answer == record["answer"]
    return right / len(records)


@pytest.fixture(scope="module")
def trained(transplanted, colour_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    snapshots = {}

    def snapshot(info):
        if info.stage == "stage2" and info.step == info.total_steps:
            snapshots["final"] = {k: v.detach().clone() for k, v in info.model.state_dict().items()}

    result = train(transplanted["mistral"], recipe=load_recipe("tiny-cpu"), data=colour_data["train"],
                   image_root=colour_data["root"], output=root / "run", feature_cache=root / "cache",
                   callbacks=[snapshot], show_progress=False)
    return result, snapshots["final"], root


def test_loss_falls_and_heldout_accuracy_rises_from_chance(trained, transplanted, colour_data):
    result, _, _ = trained
    losses = [h["loss"] for h in result.history]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
    before = heldout_accuracy(transplanted["mistral"], colour_data)
    after = heldout_accuracy(result.output / "final" / "merged", colour_data)
    assert before <= 0.4  # four colours: chance is 0.25
    assert after >= 0.8, after


def test_only_projector_and_lora_change(trained, transplanted):
    _, final, _ = trained
    original = load_file(transplanted["mistral"] / "model.safetensors")
    lora = [k for k in final if "lora_" in k]
    assert lora
    checked = 0
    for name, tensor in final.items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        if "multi_modal_projector" in key:
            if "original_module" not in key:  # the trained copy saved with the adapter
                assert not torch.equal(tensor.float(), original[key].float()), key
            continue
        if key == "lm_head.weight" or key in original:
            assert torch.equal(tensor, original[key]), key
            checked += 1
    assert checked > 40  # vision tower, embeddings and every base LLM weight were compared


def test_manifest_and_artifacts(trained, transplanted, colour_data):
    result, _, _ = trained
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["finished"] is True
    assert manifest["recipe_hash"] == recipe_hash(load_recipe("tiny-cpu"))
    assert manifest["inputs"]["data_sha256"] == hashlib.sha256(colour_data["train"].read_bytes()).hexdigest()
    assert manifest["data"]["samples"] == 128 and manifest["data"]["supervised_tokens_min"] >= 2
    names = [json.loads(line)["image"] for line in colour_data["train"].read_text().splitlines()]
    distinct = len({hashlib.sha256((colour_data["root"] / n).read_bytes()).digest() for n in names})
    assert manifest["features"]["computed"] == distinct and manifest["features"]["reused"] == 128 - distinct
    assert 0 <= manifest["stages"]["stage2"]["padding_fraction"] < 0.2
    assert manifest["final_loss"] == result.history[-1]["loss"]
    rows = (result.output / "loss.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss,lr" and len(rows) == len(result.history) + 1
    assert (result.output / "loss.png").stat().st_size > 1000
    merged, info = LlavaForConditionalGeneration.from_pretrained(result.output / "final" / "merged",
                                                                 output_loading_info=True)
    assert not any(info.values())
    for export in ("adapter", "merged"):
        copy = json.loads((result.output / "final" / export / "manifest.json").read_text())
        assert copy["recipe_hash"] == manifest["recipe_hash"] and copy["final_loss"] == manifest["final_loss"]
        assert copy["inputs"]["data_sha256"] == manifest["inputs"]["data_sha256"] and copy["seconds"] > 0
    adapter = load_file(result.output / "final" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k or "multi_modal_projector" in k for k in adapter)


def test_adapter_on_the_transplant_gives_the_merged_logits(trained, transplanted):
    from peft import PeftModel

    result, _, _ = trained
    base = LlavaForConditionalGeneration.from_pretrained(transplanted["mistral"])
    with_adapter = PeftModel.from_pretrained(base, result.output / "final" / "adapter").eval()
    merged = LlavaForConditionalGeneration.from_pretrained(result.output / "final" / "merged").eval()
    processor = AutoProcessor.from_pretrained(transplanted["mistral"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    inputs = processor(images=Image.new("RGB", (30, 30), (0, 0, 255)),
                       text=processor.apply_chat_template(messages, add_generation_prompt=True), return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(**inputs).logits, merged(**inputs).logits, rtol=1e-4, atol=1e-4)


def test_a_second_backbone_reuses_the_features_and_keeps_the_tower_bit_identical(trained, kit, transplanted,
                                                                                  colour_data, tmp_path):
    """The kit's tower is float32 and Qwen2 is bfloat16: the merged model is written in bfloat16, its tower not."""
    _, _, root = trained
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=1", "stage2.max_steps=1"])
    result = train(transplanted["qwen2"], recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                   output=tmp_path / "qwen", feature_cache=root / "cache", show_progress=False)
    assert result.manifest["features"]["computed"] == 0
    source = {k.split("vision_tower.", 1)[1]: v for k, v in read_tensors(kit.vlm).items() if "vision_tower." in k}
    merged = read_tensors(result.output / "final" / "merged")
    tower = {k.split("vision_tower.", 1)[1]: v for k, v in merged.items() if "vision_tower." in k}
    assert len(tower) == len(source) > 10
    assert {v.dtype for v in source.values()} == {torch.float32}
    assert all(tensor_sha(tower[k]) == tensor_sha(source[k]) and tower[k].dtype == source[k].dtype for k in source)
    assert {v.dtype for k, v in merged.items() if "language_model" in k} == {torch.bfloat16}  # the LLM's own
    reloaded = LlavaForConditionalGeneration.from_pretrained(result.output / "final" / "merged", dtype="auto")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}


def test_interrupted_run_resumes_to_the_same_weights(transplanted, colour_data, tmp_path):
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=3", "stage2.max_steps=5",
                                                        "stages.stage2.lora.dropout=0.1"])
    common = dict(recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                  feature_cache=tmp_path / "cache", show_progress=False)
    whole = train(transplanted["mistral"], output=tmp_path / "whole", **common)

    def stop(info):
        if info.stage == "stage2" and info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(transplanted["mistral"], output=tmp_path / "cut", save_every=2, callbacks=[stop], **common)
    assert (tmp_path / "cut" / "stage2" / "checkpoint" / "state.json").is_file()
    refused = pytest.raises(BackboneSwapError, match="--resume")
    with refused:
        train(transplanted["mistral"], output=tmp_path / "cut", save_every=2, **common)
    # a checkpoint of an earlier version: one projector group, biases decayed with the weights
    shutil.copytree(tmp_path / "cut", tmp_path / "earlier")
    saved = tmp_path / "earlier" / "stage2" / "checkpoint" / "optimizer.pt"
    state = torch.load(saved, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop(1)["params"]
    torch.save(state, saved)
    with pytest.raises(BackboneSwapError, match="other parameter groups.*Delete .*checkpoint and resume"):
        train(transplanted["mistral"], output=tmp_path / "earlier", save_every=2, resume=True, **common)
    resumed = train(transplanted["mistral"], output=tmp_path / "cut", save_every=2, resume=True, **common)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a = load_file(tmp_path / "whole" / "stage2" / "trainable.safetensors")
    b = load_file(tmp_path / "cut" / "stage2" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    shutil.rmtree(tmp_path / "cache")


def test_a_stage_is_checkpointed_every_50_steps_unless_told_otherwise(transplanted, colour_data, tmp_path):
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=1", "stage2.max_steps=53"])
    common = dict(recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                  feature_cache=tmp_path / "cache", show_progress=False)

    def stop(info):
        if info.stage == "stage2" and info.step == 52:
            raise KeyboardInterrupt

    for save_every, output, saved_at in ((None, "default", 50), (0, "never", None)):
        with pytest.raises(KeyboardInterrupt):
            train(transplanted["mistral"], output=tmp_path / output, save_every=save_every, callbacks=[stop],
                  **common)
        state = tmp_path / output / "stage2" / "checkpoint" / "state.json"
        assert (json.loads(state.read_text())["step"] if state.exists() else None) == saved_at


def test_trained_model_stops_by_itself_with_the_end_of_turn(trained, colour_data):
    result, _, _ = trained
    folder = result.output / "final" / "merged"
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    eot = json.loads((result.output / "manifest.json").read_text())["data"]["end_of_turn"]
    eot_id = processor.tokenizer.convert_tokens_to_ids(eot)
    record = json.loads(colour_data["heldout"].read_text().splitlines()[0])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the shape?"}]}]
    inputs = processor(images=Image.open(colour_data["root"] / record["image"]),
                       text=processor.apply_chat_template(messages, add_generation_prompt=True), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eot_id)
    generated = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert eot_id in generated and len(generated) < 12
    assert generated.index(eot_id) == len(generated) - 1


def test_text_only_batches_train_in_every_stage(transplanted, colour_data, tmp_path):
    from backbone_swap.demo import scenes

    records = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "name a warm colour"},
                                                 {"from": "gpt", "value": "red"}]} for i in range(16)]
    data = scenes.write_jsonl(records, tmp_path / "text.jsonl")
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=2", "stage2.max_steps=2"])
    result = train(transplanted["mistral"], recipe=recipe, data=data, image_root=None, output=tmp_path / "run",
                   feature_cache=tmp_path / "cache", show_progress=False)
    assert [h["stage"] for h in result.history] == ["stage1", "stage1", "stage2", "stage2"]


def test_image_and_text_only_samples_train_in_batches_of_one_kind(transplanted, colour_data, tmp_path):
    """24 image and 13 text-only samples, batches of 8: four batches of one kind, then the merged rest."""
    from backbone_swap.demo import scenes

    images = [json.loads(line) for line in colour_data["train"].read_text().splitlines()[:24]]
    texts = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "name a warm colour"},
                                               {"from": "gpt", "value": "red"}]} for i in range(13)]
    data = scenes.write_jsonl(images + texts, tmp_path / "mixed.jsonl")
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stages.stage1.epochs=1", "stage2.max_steps=1"])
    result = train(transplanted["mistral"], recipe=recipe, data=data, image_root=colour_data["root"],
                   output=tmp_path / "run", feature_cache=tmp_path / "cache", show_progress=False)
    assert [h["stage"] for h in result.history] == ["stage1"] * 5 + ["stage2"]
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_tower_on_every_batch_trains_to_the_weights_of_the_cache(transplanted, colour_data, tmp_path):
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=2", "stage2.max_steps=2"])
    common = dict(recipe=recipe, data=colour_data["train"], image_root=colour_data["root"], show_progress=False)
    cached = train(transplanted["mistral"], output=tmp_path / "cached", feature_cache=tmp_path / "cache", **common)
    live = train(transplanted["mistral"], output=tmp_path / "live", feature_cache=tmp_path / "unused",
                 cache_features=False, **common)
    assert live.manifest["features"] == {"cache": None, "computed": "every step"}
    assert not (tmp_path / "unused").exists()
    assert [h["loss"] for h in live.history] == pytest.approx([h["loss"] for h in cached.history], rel=1e-5)
    a = load_file(tmp_path / "cached" / "stage2" / "trainable.safetensors")
    b = load_file(tmp_path / "live" / "stage2" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_weight_decay_shrinks_the_projector_matrices_and_leaves_its_biases(kit):
    """One AdamW step with zero gradients: decoupled decay multiplies decayed weights by (1 - lr * decay)."""
    from backbone_swap.training.model import decay_groups

    projector = LlavaForConditionalGeneration.from_pretrained(kit.vlm).model.multi_modal_projector
    before = {n: p.detach().clone() for n, p in projector.named_parameters()}
    optimizer = torch.optim.AdamW(decay_groups(list(projector.parameters()), 1e-2, 0.1), weight_decay=0.1)
    for p in projector.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in projector.named_parameters():
        factor = 1 - 1e-2 * 0.1 if name.endswith("weight") else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]


def test_max_length_beyond_the_llms_positions_is_limited_to_them(transplanted, colour_data, tmp_path):
    """The kit's LLMs have 512 positions: a recipe asking for 100,000 tokens trains within 512, and a longer
    sample is a bad record that says why."""
    from backbone_swap.demo import scenes

    records = [json.loads(line) for line in colour_data["train"].read_text().splitlines()[:16]]
    long = dict(records[0], id="long", conversations=[records[0]["conversations"][0],
                                                      {"from": "gpt", "value": "red " * 600}])
    data = scenes.write_jsonl([*records, long], tmp_path / "d.jsonl")
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["max_length=100000", "stage1.max_steps=1",
                                                       "stage2.max_steps=1"])
    common = dict(recipe=recipe, data=data, image_root=colour_data["root"], feature_cache=tmp_path / "cache",
                  show_progress=False)
    with pytest.raises(BackboneSwapError, match="'long'.*longer than max_length 512"):
        train(transplanted["mistral"], output=tmp_path / "refused", **common)
    result = train(transplanted["mistral"], output=tmp_path / "run", on_bad_sample="skip", **common)
    assert result.manifest["data"]["max_length"] == 512 and result.manifest["data"]["skipped_ids"] == ["long"]


def test_features_are_cached_in_the_recipes_precision(transplanted, colour_data, tmp_path):
    # the cache holds what the bf16 tower computes, as the tower gives without the cache (and in LLaVA's training)
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["precision=bf16", "stage1.max_steps=1", "stage2.max_steps=1"])
    result = train(transplanted["mistral"], recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                   output=tmp_path / "run", feature_cache=tmp_path / "cache", show_progress=False)
    folder = result.manifest["features"]["cache"]
    files = sorted(folder_path for folder_path in (tmp_path / "cache").rglob("*.safetensors"))
    assert files and all(str(f).startswith(folder) for f in files)
    record = json.loads(colour_data["train"].read_text().splitlines()[0])
    model = LlavaForConditionalGeneration.from_pretrained(transplanted["mistral"], dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(transplanted["mistral"])
    from backbone_swap.training.features import FeatureCache, preprocess

    cache = FeatureCache(tmp_path / "cache", transplanted["mistral"], processor.image_processor, image_aspect="pad",
                         layer=-2, strategy="default", dtype="bfloat16")
    assert str(cache.folder) == folder
    image = colour_data["root"] / record["image"]
    pixels = preprocess([Image.open(image).convert("RGB")], processor.image_processor, "pad")
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels.to(torch.bfloat16), output_hidden_states=True).hidden_states
    cached = cache.load(image)
    assert cached.dtype == torch.bfloat16
    torch.testing.assert_close(cached, hidden[-2][0, 1:], rtol=0, atol=0)
    from backbone_swap.training.schemes import make_accelerator

    assert make_accelerator("fp32").mixed_precision == "no"  # a later training in this process may choose another


def test_a_feature_cache_the_disk_cannot_hold_is_refused_before_it_is_filled(cli, transplanted, colour_data, tmp_path,
                                                                            monkeypatch):
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.training.features import bytes_per_image

    vision = read_anatomy(open_checkpoint(transplanted["mistral"])).vision
    names = {json.loads(line)["image"] for line in colour_data["train"].read_text().splitlines()}
    images = len({hashlib.sha256((colour_data["root"] / name).read_bytes()).digest() for name in names})  # by content
    need = images * bytes_per_image(vision.image_tokens, vision.feature_dim, "float32")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=need - 1))  # a nearly full disk
    args = ["train", transplanted["mistral"], "--recipe", "tiny-cpu", "--data", colour_data["train"],
            "--image-root", colour_data["root"], "-o", tmp_path / "run", "--feature-cache", tmp_path / "cache",
            "--set", "stage1.max_steps=1", "--set", "stage2.max_steps=1"]
    result = cli(*args)
    assert result.code == 1 and "Traceback" not in result.err
    assert f"needs about {need / 1e9:.1f} GB for {images:,} images not cached yet" in " ".join(result.err.split())
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing computed
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=need))  # just enough
    assert cli(*args, "--resume").code == 0
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == images


def test_an_adapter_folder_is_named_as_one_and_the_merged_model_pointed_to(trained, cli):
    result, _, _ = trained
    adapter = result.output / "final" / "adapter"
    refused = cli("inspect", adapter)
    assert refused.code == 1 and refused.err.count("\n") == 1, refused.err
    assert f"{adapter} is a LoRA adapter" in refused.err and "final/merged" in refused.err
    merged = cli("inspect", result.output / "final" / "merged", "--json")
    assert merged.code == 0 and json.loads(merged.out)["kind"] == "vlm"
