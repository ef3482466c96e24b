"""Bad input ends in one sentence with what to do, exit code 1, no traceback, inputs intact, no output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _garble(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32
    weights.write_bytes(bytes(data))


def _to_pickle(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _bert(config: dict) -> None:
    config.update(architectures=["BertModel"], model_type="bert")


def _vision_type(config: dict) -> None:
    config["vision_config"]["model_type"] = "dinov2"


def _wrong_hidden(config: dict) -> None:
    config["hidden_size"] = 64


CASES = {
    # name: (which input to damage, how, words the message must contain)
    "vlm missing": ("vlm", "delete", "does not exist"),
    "vlm empty": ("vlm", "empty", "has no config.json"),
    "llm given as vlm": ("swap", None, "not a VLM"),
    "not a causal LM": ("llm", lambda f: _edit_config(f, _bert), "neither a LLaVA-style VLM nor a causal LM"),
    "unsupported tower": ("vlm", lambda f: _edit_config(f, _vision_type), "dinov2 vision tower"),
    "truncated weights": ("llm", _truncate, "corrupt or truncated"),
    "corrupt weights": ("vlm", _garble, "corrupt or truncated"),
    "pickle weights": ("llm", _to_pickle, "--allow-pickle"),
    "remote code": ("llm", lambda f: _edit_config(f, lambda c: c.update(auto_map={"AutoModel": "m.M"})),
                    "--trust-remote-code"),
    "config disagrees with weights": ("llm", lambda f: _edit_config(f, _wrong_hidden), "hidden_size 64"),
    "no chat template": ("llm", lambda f: (f / "chat_template.jinja").unlink(), "--chat-template"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, kit, cli, copy_of, digest, tmp_path):
    which, damage, words = CASES[case]
    vlm, llm = copy_of(kit.vlm, "vlm"), copy_of(kit.mistral, "llm")
    if which == "swap":
        vlm, llm = llm, vlm
    elif damage == "delete":
        import shutil

        shutil.rmtree(vlm)
    elif damage == "empty":
        import shutil

        shutil.rmtree(vlm)
        vlm.mkdir()
    else:
        damage(vlm if which == "vlm" else llm)
    before = {p: digest(p) for p in (vlm, llm) if p.exists()}
    out = tmp_path / "out"
    result = cli("transplant", "--vlm", vlm, "--llm", llm, "-o", out)
    assert result.code == 1
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert words in result.err
    assert "Traceback" not in result.err + result.out
    assert {p: digest(p) for p in before} == before
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_output_inside_an_input_is_refused(kit, cli, copy_of):
    vlm = copy_of(kit.vlm, "vlm")
    result = cli("transplant", "--vlm", vlm, "--llm", kit.mistral, "-o", vlm / "new")
    assert result.code == 1 and "overlaps the input" in result.err
    assert not (vlm / "new").exists()


def test_pickle_weights_load_when_allowed(kit, cli, copy_of, tmp_path):
    vlm = copy_of(kit.vlm, "vlm")
    _to_pickle(vlm)
    result = cli("transplant", "--vlm", vlm, "--llm", kit.mistral, "-o", tmp_path / "out", "--allow-pickle")
    assert result.code == 0, result.err
    old = load_file(kit.vlm / "model.safetensors")
    new = load_file(tmp_path / "out" / "model.safetensors")
    vision = [k for k in old if k.startswith("vision_tower.")]
    assert vision and all(torch.equal(new["model." + k], old[k]) for k in vision)


def test_chat_template_file_stands_in_for_a_missing_template(kit, cli, copy_of, tmp_path):
    llm = copy_of(kit.mistral, "llm")
    (llm / "chat_template.jinja").unlink()
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}")
    result = cli("transplant", "--vlm", kit.vlm, "--llm", llm, "-o", tmp_path / "out", "--chat-template", template)
    assert result.code == 0, result.err


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "backbone_swap.cli", "inspect", str(tmp_path / "nothing")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    expected = f"error: {tmp_path / 'nothing'} does not exist. Pass the folder of a local Hugging Face checkpoint.\n"
    assert result.stderr == expected
    debug = subprocess.run(
        [sys.executable, "-m", "backbone_swap.cli", "--debug", "inspect", str(tmp_path / "nothing")],
        capture_output=True, text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_tensor_stored_twice_is_refused(kit, cli, copy_of, tmp_path):
    import shutil

    vlm = copy_of(kit.vlm, "vlm")
    shutil.copy(vlm / "model.safetensors", vlm / "extra.safetensors")
    (vlm / "model.safetensors").rename(vlm / "base.safetensors")
    result = cli("transplant", "--vlm", vlm, "--llm", kit.mistral, "-o", tmp_path / "out")
    assert result.code == 1 and "stored in two weight files" in result.err
