"""``backbone-swap inspect`` reports what transformers itself finds in a checkpoint, without loading it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vlm_anatomy_matches_the_loaded_model(kit, cli):
    result = cli("inspect", kit.vlm, "--json")
    assert result.code == 0, result.err
    a = json.loads(result.out)
    model = LlavaForConditionalGeneration.from_pretrained(kit.vlm)
    processor = AutoProcessor.from_pretrained(kit.vlm)
    cfg = model.config
    assert a["kind"] == "vlm" and a["model_type"] == "llava" and a["family"] == "llama"
    assert a["hidden_size"] == cfg.text_config.hidden_size
    assert a["vocab_size"] == model.get_input_embeddings().weight.shape[0]
    v = a["vision"]
    assert (v["model_type"], v["hidden_size"], v["image_size"], v["patch_size"]) == (
        "clip_vision_model", cfg.vision_config.hidden_size, cfg.vision_config.image_size,
        cfg.vision_config.patch_size)
    assert v["feature_layer"] == cfg.vision_feature_layer and v["select_strategy"] == cfg.vision_feature_select_strategy
    projector = model.model.multi_modal_projector
    assert (a["projector"]["in_features"], a["projector"]["out_features"]) == (
        projector.linear_1.in_features, projector.linear_1.out_features)
    assert a["image_token"] == processor.image_token
    assert a["image_token_id"] == processor.image_token_id == cfg.image_token_id
    assert a["pad_token"] == processor.tokenizer.pad_token and a["chat_template"] is True
    assert a["parameters"] == {
        "language_model": _numel(model.model.language_model) + _numel(model.lm_head),
        "projector": _numel(projector),
        "vision_tower": _numel(model.model.vision_tower),
    }
    assert set(a["dtypes"].values()) == {"F32"}


def test_llm_anatomy_counts_tied_embeddings_once(kit, cli):
    a = json.loads(cli("inspect", kit.qwen2, "--json").out)
    model = AutoModelForCausalLM.from_pretrained(kit.qwen2)
    assert a["kind"] == "llm" and a["family"] == "qwen2" and a["tie_word_embeddings"] is True
    assert a["parameters"] == {"language_model": model.num_parameters()}
    assert a["dtypes"] == {"language_model": "BF16"}
    assert a["eos_token"] == AutoTokenizer.from_pretrained(kit.qwen2).eos_token
    assert a["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_compatibility_says_what_the_transplant_will_do(kit, cli):
    out = json.loads(cli("inspect", kit.vlm, "--llm", kit.mistral, "--json").out)["transplant"]
    tok = AutoTokenizer.from_pretrained(kit.mistral)
    assert out["problems"] == []
    assert (out["projector_in"], out["projector_out"]) == (32, 40)
    assert out["add_tokens"] == ["<image>", "<pad>"] and out["pad_token"] == "<pad>"
    assert out["embedding_rows"] == [len(tok), len(tok) + 2]
    assert out["reuse_projector_possible"] is False
    same = json.loads(cli("inspect", kit.vlm, "--llm", kit.llama48, "--json").out)["transplant"]
    assert same["reuse_projector_possible"] is True and same["add_tokens"] == ["<image>"]


def test_table_names_the_parts(kit, cli):
    result = cli("inspect", kit.vlm, "--llm", kit.mistral)
    assert result.code == 0
    for words in ("clip_vision_model", "32 -> 48 -> 48", "32 -> 40 -> 40", "<image>, <pad>", "mistral"):
        assert words in result.out


def test_inspect_and_help_do_not_import_torch(kit):
    code = (
        "import sys\n"
        "from backbone_swap.cli import main\n"
        f"for args in (['--help'], ['inspect', {str(kit.vlm)!r}, '--json']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_llama_3_note_shows_only_for_llama_3_and_once(kit, cli, tmp_path):
    from backbone_swap.demo import tiny_models as tm

    llama3 = tm.build_llm(tmp_path / "llama3", tm.llama3_spec())
    vlm = json.loads(cli("inspect", kit.vlm, "--json").out)  # a llama whose vocabulary has no <|eot_id|>
    assert vlm["family"] == "llama" and not any("Llama 3" in note for note in vlm["notes"])
    both = cli("inspect", kit.vlm, "--llm", llama3, "--json")
    result = json.loads(both.out)
    assert [note for part in ("model", "llm", "transplant") for note in result[part]["notes"]
            if "Llama 3" in note] == ["Llama 3 has no pad token and ends turns with <|eot_id|>"]


@pytest.mark.parametrize("command", [["inspect"], ["eval", "--suite", "shapes", "-o", "ev"]])
def test_a_hub_id_is_answered_with_what_is_read(cli, command):
    result = cli(command[0], "llava-hf/llava-1.5-7b-hf", *command[1:])
    assert result.code == 1 and result.err.count("\n") == 1
    assert "only local folders" in result.err and "downloads nothing" in result.err
    assert "huggingface-cli download llava-hf/llava-1.5-7b-hf" in result.err
