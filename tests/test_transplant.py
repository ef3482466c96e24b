"""``backbone-swap transplant``: what is copied stays bit-identical, what is new is what the docs say."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration
from weights import read_tensors

from backbone_swap.checkpoints import streaming as st
from backbone_swap.transplant import transplant


@pytest.fixture(scope="module")
def made(kit, tmp_path_factory, digest):
    """Transplants onto the untied, pad-less Mistral and the tied bfloat16 Qwen2, inputs hashed around them."""
    root = tmp_path_factory.mktemp("transplants")
    before = {p: digest(p) for p in (kit.vlm, kit.mistral, kit.qwen2)}
    outputs = {
        "mistral": transplant(kit.vlm, kit.mistral, root / "mistral", seed=7).output,
        "qwen2": transplant(kit.vlm, kit.qwen2, root / "qwen2", seed=7).output,
    }
    after = {p: digest(p) for p in before}
    return outputs, before, after


def test_inputs_are_not_modified(made):
    _, before, after = made
    assert before == after


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_vision_tower_is_bit_identical(kit, made, llm):
    old = {k.removeprefix("model."): v for k, v in read_tensors(kit.vlm).items()}
    new = {k.removeprefix("model."): v for k, v in read_tensors(made[0][llm]).items()}
    vision = [k for k in old if k.startswith("vision_tower.")]
    assert vision
    for k in vision:
        assert new[k].dtype == old[k].dtype
        assert torch.equal(new[k], old[k]), k


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_language_model_is_the_new_llm_except_added_rows(kit, made, llm):
    source = getattr(kit, llm)
    src = read_tensors(source)
    out = read_tensors(made[0][llm])
    tok = AutoTokenizer.from_pretrained(source)
    n = len(tok)
    added = AutoTokenizer.from_pretrained(made[0][llm])
    assert len(added) > n
    for name, tensor in src.items():
        target = "lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name[len("model."):]
        got = out[target]
        assert got.dtype == tensor.dtype
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            assert torch.equal(got[:n], tensor)
            mean = tensor.double().mean(dim=0).to(tensor.dtype)  # the mean is accumulated in float64
            for row in range(n, len(added)):
                assert torch.equal(got[row], mean)
        else:
            assert torch.equal(got, tensor), name
    if llm == "qwen2":
        assert "lm_head.weight" not in out  # tied: transformers rebuilds it from the embedding


def test_projector_is_seeded_and_sized_for_the_new_llm(kit, made, tmp_path):
    out = read_tensors(made[0]["mistral"])
    assert out["model.multi_modal_projector.linear_1.weight"].shape == (40, 32)
    assert out["model.multi_modal_projector.linear_2.weight"].shape == (40, 40)
    again = read_tensors(transplant(kit.vlm, kit.mistral, tmp_path / "same", seed=7, hash_inputs=False).output)
    other = read_tensors(transplant(kit.vlm, kit.mistral, tmp_path / "other", seed=8, hash_inputs=False).output)
    name = "model.multi_modal_projector.linear_1.weight"
    assert torch.equal(again[name], out[name])
    assert not torch.equal(other[name], out[name])
    with torch.random.fork_rng():
        torch.manual_seed(7)
        reference = torch.nn.Linear(32, 40)
    assert torch.equal(out[name], reference.weight.detach())


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_loads_without_missing_weights_and_generates_through_the_processor(kit, made, llm):
    folder = made[0][llm]
    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    processor = AutoProcessor.from_pretrained(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    eot = {"mistral": "</s>", "qwen2": "<|im_end|>"}[llm]
    assert manifest["changes"]["end_of_turn"] == eot
    assert processor.tokenizer.pad_token not in {eot, None}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    llm_prompt = AutoTokenizer.from_pretrained(getattr(kit, llm)).apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat colour is it"}], tokenize=False, add_generation_prompt=True)
    assert prompt == llm_prompt  # the new LLM's own format, with the image first
    image = Image.new("RGB", (48, 40), (20, 200, 20))
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    if llm == "qwen2":
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        assert model.model.language_model.dtype == torch.bfloat16


def test_vision_side_is_configured_as_before(kit, made):
    old = LlavaForConditionalGeneration.from_pretrained(kit.vlm)
    new = LlavaForConditionalGeneration.from_pretrained(made[0]["mistral"])
    old_proc, new_proc = AutoProcessor.from_pretrained(kit.vlm), AutoProcessor.from_pretrained(made[0]["mistral"])
    image = Image.new("RGB", (50, 36), (10, 20, 200))
    assert torch.equal(old_proc.image_processor(image, return_tensors="pt")["pixel_values"],
                       new_proc.image_processor(image, return_tensors="pt")["pixel_values"])
    for key in ("vision_feature_layer", "vision_feature_select_strategy", "image_seq_length"):
        assert getattr(new.config, key) == getattr(old.config, key)
    pixels = old_proc.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(old.model.vision_tower(pixels).last_hidden_state,
                           new.model.vision_tower(pixels).last_hidden_state)


def test_manifest_records_inputs_changes_and_versions(kit, made):
    manifest = json.loads((made[0]["mistral"] / "manifest.json").read_text())
    assert manifest["step"] == "transplant"
    for role, folder in (("vlm", kit.vlm), ("llm", kit.mistral)):
        expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert manifest["inputs"][role]["weights"] == {"model.safetensors": expected}
    tok = AutoTokenizer.from_pretrained(made[0]["mistral"])
    assert manifest["changes"]["added_tokens"] == {"<image>": tok.convert_tokens_to_ids("<image>"),
                                                   "<pad>": tok.pad_token_id}
    assert manifest["changes"]["projector"]["seed"] == 7
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"]["torch"]
    assert manifest["versions"]["transformers"]
    assert manifest["seconds"] > 0


def test_reuse_copies_the_old_projector_when_shapes_allow(kit, cli, tmp_path):
    result = cli("transplant", "--vlm", kit.vlm, "--llm", kit.llama48, "-o", tmp_path / "reuse", "--projector", "reuse")
    assert result.code == 0, result.err
    old, new = read_tensors(kit.vlm), read_tensors(tmp_path / "reuse")
    for name in [k for k in old if "multi_modal_projector" in k]:
        assert torch.equal(new["model." + name.removeprefix("model.")], old[name])
    refused = cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", tmp_path / "no", "--projector", "reuse")
    assert refused.code == 1 and "cannot be reused" in refused.err
    assert not (tmp_path / "no").exists()


def test_small_shards_are_indexed_and_load(kit, cli, tmp_path):
    result = cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", tmp_path / "sharded",
                 "--max-shard-size", "60KB")
    assert result.code == 0, result.err
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((tmp_path / "sharded" / f).stat().st_size <= 60_000 + 40_000 for f in files)
    _, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "sharded", output_loading_info=True)
    assert not any(info.values())


def test_chat_template_override(kit, cli, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}")
    result = cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", tmp_path / "o",
                 "--chat-template", template)
    assert result.code == 0, result.err
    processor = AutoProcessor.from_pretrained(tmp_path / "o")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    assert processor.apply_chat_template(messages) == "<<user>><image>\nhi"


def test_overwrite_replaces_only_a_complete_output(kit, cli, tmp_path, monkeypatch, digest):
    out = tmp_path / "o"
    assert cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", out).code == 0
    before = digest(out)
    refused = cli("transplant", "--vlm", kit.vlm, "--llm", kit.qwen2, "-o", out)
    assert refused.code == 1 and "--overwrite" in refused.err

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "write_file", disk_full)
    failed = cli("transplant", "--vlm", kit.vlm, "--llm", kit.qwen2, "-o", out, "--overwrite")
    assert failed.code == 1 and "No space left on device" in failed.err
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no partial folder left behind
    monkeypatch.undo()
    assert cli("transplant", "--vlm", kit.vlm, "--llm", kit.qwen2, "-o", out, "--overwrite").code == 0
    assert json.loads((out / "manifest.json").read_text())["inputs"]["llm"]["path"] == str(kit.qwen2)


def test_a_siglip_tower_transplants_and_generates(kit, tmp_path):
    from backbone_swap.demo import tiny_models as tm

    vlm = tm.build_llava(tmp_path / "siglip-vlm",
                         vision=tm.VisionSpec(model_type="siglip_vision_model", select_strategy="full"))
    out = transplant(vlm, kit.mistral, tmp_path / "out", hash_inputs=False).output
    old, new = read_tensors(vlm), read_tensors(out)
    vision = [k for k in old if k.startswith("vision_tower.")]
    assert vision and all(torch.equal(new["model." + k], old[k]) for k in vision)
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    inputs = processor(images=Image.new("RGB", (40, 40)), text=processor.apply_chat_template(
        messages, add_generation_prompt=True), return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16  # no CLS token to drop
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize(("family", "end_of_turn"), [("phi3", "<|end|>"), ("gemma2", "<end_of_turn>"),
                                                     ("gemma", "<end_of_turn>"), ("gemma3", "<end_of_turn>"),
                                                     ("olmo2", "<|im_end|>")])
def test_other_llm_families_receive_the_tower(kit, tmp_path, family, end_of_turn):
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.demo import tiny_models as tm

    llm = tm.build_llm(tmp_path / family, getattr(tm, f"{family}_spec")())
    anatomy = read_anatomy(open_checkpoint(llm))
    unknown = "olmo2 is not in the family registry: LoRA targets are found from the module names"
    assert (unknown in anatomy.notes) == (family == "olmo2")
    if family == "olmo2":  # every projection of the decoder layers, as a registry entry would list them
        assert anatomy.lora_targets == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])
    out = transplant(kit.vlm, llm, tmp_path / "out", hash_inputs=False).output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["changes"]["end_of_turn"] == end_of_turn
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    inputs = processor(images=Image.new("RGB", (40, 40)), text=processor.apply_chat_template(
        messages, add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2
    from backbone_swap.training.model import lora_target_regex

    pattern = lora_target_regex(model, "family")
    import re

    targets = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    assert targets and all(".language_model." in n for n in targets)


def test_an_image_token_the_llm_already_has_is_reused(kit, tmp_path):
    from transformers import AutoTokenizer

    from backbone_swap.demo import tiny_models as tm

    llm = tm.build_llm(tmp_path / "llm", tm.mistral_spec())
    tok = AutoTokenizer.from_pretrained(llm)
    tok.add_tokens(["<image>"])  # an ordinary (not special) added token, with a row of its own
    tok.save_pretrained(llm)
    config = json.loads((llm / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    weights = load_file(llm / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = torch.cat([weights[name], weights[name][:1]])
    save_file(weights, llm / "model.safetensors", metadata={"format": "pt"})
    config["vocab_size"] = len(tok)
    (llm / "config.json").write_text(json.dumps(config))
    out = transplant(kit.vlm, llm, tmp_path / "out", hash_inputs=False).output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "<image>" not in manifest["changes"]["added_tokens"]
    assert manifest["changes"]["image_token"]["id"] == tok.convert_tokens_to_ids("<image>")
    new_tok = AutoTokenizer.from_pretrained(out)
    ids = new_tok("look:<image>\n", add_special_tokens=False)["input_ids"]
    assert ids.count(manifest["changes"]["image_token"]["id"]) == 1
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())


@pytest.mark.parametrize("layout", ["hub", "runtime"])
def test_both_llava_key_layouts_are_read(kit, tmp_path, layout):
    """llava-hf files on the hub name the tower ``vision_tower.vision_model.*``; transformers 5 and our own
    outputs use ``model.vision_tower.*``."""
    from safetensors.torch import load_file, save_file

    if layout == "runtime":
        vlm = transplant(kit.vlm, kit.llama48, tmp_path / "first", hash_inputs=False).output
    else:
        import shutil

        vlm = tmp_path / "hub"
        shutil.copytree(kit.vlm, vlm)
        weights = load_file(vlm / "model.safetensors")
        renamed = {("vision_tower.vision_model." + k.removeprefix("vision_tower.") if k.startswith("vision_tower.")
                    else k): v for k, v in weights.items()}
        save_file(renamed, vlm / "model.safetensors", metadata={"format": "pt"})
    old = {k.removeprefix("model.").replace("vision_model.", ""): v for k, v in read_tensors(vlm).items()}
    out = transplant(vlm, kit.mistral, tmp_path / "out", hash_inputs=False).output
    new = {k.removeprefix("model."): v for k, v in read_tensors(out).items()}
    vision = [k for k in old if k.startswith("vision_tower.")]
    assert vision and all(torch.equal(new[k], old[k]) for k in vision)
    _, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())


def test_dtype_and_padded_vocabulary(kit, cli, tmp_path):
    result = cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", tmp_path / "out", "--dtype", "bfloat16",
                 "--pad-vocab-to", "64")
    assert result.code == 0, result.err
    out, old = read_tensors(tmp_path / "out"), read_tensors(kit.vlm)
    assert {t.dtype for t in out.values()} == {torch.bfloat16}
    for name in [k for k in old if k.startswith("vision_tower.")]:
        assert torch.equal(out["model." + name], old[name].to(torch.bfloat16))
    rows = out["model.language_model.embed_tokens.weight"].shape[0]
    assert rows % 64 == 0 and rows >= len(AutoTokenizer.from_pretrained(tmp_path / "out"))
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()) and model.dtype == torch.bfloat16
    assert model.config.text_config.vocab_size == rows
    bad = cli("transplant", "--vlm", kit.vlm, "--llm", kit.mistral, "-o", tmp_path / "bad", "--dtype", "int8")
    assert bad.code == 1 and "--dtype" in bad.err


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma3", "olmo2"])
def test_newer_and_unknown_families_train_with_lora_on_every_projection(kit, colour_data, tmp_path, family):
    from safetensors.torch import load_file

    from backbone_swap.demo import tiny_models as tm
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.training.train import train

    llm = tm.build_llm(tmp_path / family, getattr(tm, f"{family}_spec")())
    out = transplant(kit.vlm, llm, tmp_path / "vlm", hash_inputs=False).output
    recipe = apply_overrides(load_recipe("tiny-cpu"), ["stage1.max_steps=1", "stage2.max_steps=2"])
    result = train(out, recipe=recipe, data=colour_data["train"], image_root=colour_data["root"],
                   output=tmp_path / "run", feature_cache=tmp_path / "cache", show_progress=False)
    assert result.manifest["data"]["skipped"] == 0
    trained = load_file(tmp_path / "run" / "stage2" / "trainable.safetensors")
    leaves = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trained if ".lora_" in name}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    _, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "run" / "final" / "merged",
                                                            output_loading_info=True)
    assert not any(info.values())


def test_output_is_as_readable_as_any_folder_the_user_makes(kit, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        out = transplant(kit.vlm, kit.mistral, tmp_path / "shared", seed=0, hash_inputs=False).output
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o755
    for name in ("manifest.json", "model.safetensors", "config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
