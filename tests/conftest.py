"""The offline test kit: tiny checkpoints of the kinds users pass, built once per test session.

- ``kit.vlm``: a LLaVA checkpoint (CLIP tower, Llama text model, processor, LLaVA-1.5 style template).
- ``kit.qwen2``: a Qwen2-like LLM, ChatML template, tied embeddings, bfloat16 weights.
- ``kit.mistral``: a Mistral-like LLM without a pad token, ``[INST]`` template, untied embeddings.
- ``kit.llama48``: a Llama LLM with the VLM's hidden size, so the old projector could be reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from backbone_swap.demo import tiny_models as tm


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """The tests read what the commands print as plain text, 80 columns wide. Colour forced by the machine's
    environment (FORCE_COLOR, PY_COLORS, GITHUB_ACTIONS, TTY_COMPATIBLE) would put escape codes inside the words
    of the help, the tables and the progress bars, and a terminal width (COLUMNS, TERMINAL_WIDTH) would wrap
    them; typer and the progress console read these once, when imported, so they go before any test module is
    collected (pytest has set up its own output by now)."""
    for name in ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS",
                 "LINES", "TERMINAL_WIDTH"):
        os.environ.pop(name, None)


@dataclass(frozen=True)
class Kit:
    vlm: Path
    qwen2: Path
    mistral: Path
    llama48: Path


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("kit")
    return Kit(
        vlm=tm.build_llava(root / "llava"),
        qwen2=tm.build_llm(root / "qwen2", tm.qwen2_spec(dtype="bfloat16", seed=1)),
        mistral=tm.build_llm(root / "mistral", tm.mistral_spec(seed=2)),
        llama48=tm.build_llm(
            root / "llama48",
            tm.LLMSpec(family="llama", hidden_size=48, tokenizer=tm.TokenizerSpec(
                vocab_size=280, chat_template=tm.LLAVA_TEMPLATE, pad="<pad>"), seed=3),
        ),
    )


def folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file below ``path``, to prove that inputs are never modified."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def digest():
    return folder_digest


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a kit checkpoint into the test's own folder so the test may damage it."""

    def make(source: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or source.name)
        shutil.copytree(source, target)
        return target

    return make


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``backbone-swap ARGS`` in this process through the same entry point as the console script."""
    from backbone_swap.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def transplanted(kit, tmp_path_factory) -> dict[str, Path]:
    """The kit's VLM moved onto each kit LLM (untrained projector), shared by the tests that read them."""
    from backbone_swap.transplant import transplant

    root = tmp_path_factory.mktemp("transplanted")
    return {
        name: transplant(kit.vlm, getattr(kit, name), root / name, seed=0, hash_inputs=False).output
        for name in ("mistral", "qwen2")
    }


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> dict[str, Path]:
    """A small drawn image QA set (colour naming) split into training and held-out records."""
    from backbone_swap.demo import scenes

    root = tmp_path_factory.mktemp("colour-data")
    records = scenes.colour_questions(root / "images", 160, seed=0)
    return {
        "root": root / "images",
        "train": scenes.write_jsonl(records[:128], root / "train.jsonl"),
        "heldout": scenes.write_jsonl(records[128:], root / "heldout.jsonl"),
    }


@pytest.fixture(scope="session")
def suite_file(tmp_path_factory):
    """A three-task suite (short answer, multiple choice, structured JSON) on drawn images."""
    from backbone_swap.demo import scenes

    root = tmp_path_factory.mktemp("suite")
    images = root / "images"
    scenes.write_jsonl(scenes.colour_items(images, 12, seed=1), root / "colour.jsonl")
    scenes.write_jsonl(scenes.colour_items(images, 6, seed=2, prefix="m", choices=True), root / "choice.jsonl")
    points = [
        {
            "id": f"p{i}",
            "image": f"q{i:05d}.png",
            "question": "where is the shape? answer as json",
            "answer": '{"x": 10, "y": 20}',
        }
        for i in range(4)
    ]
    scenes.write_jsonl(points, root / "point.jsonl")
    (root / "suite.yaml").write_text(
        "name: tiny\nprobes: 3\ntasks:\n"
        "  - {name: colour, type: short_answer, needs: perception, data: colour.jsonl, image_root: images,"
        " max_new_tokens: 4}\n"
        "  - {name: choice, type: multiple_choice, needs: perception, data: choice.jsonl, image_root: images}\n"
        "  - {name: where, type: structured, format: json, needs: format, data: point.jsonl, image_root: images,"
        " max_new_tokens: 6}\n"
    )
    return root / "suite.yaml"
