"""The stability probes, batched and asking the model for the last hidden states only, equal the one-at-a-time
computation with every hidden state returned."""

from __future__ import annotations

import pytest
import torch

from backbone_swap.demo import scenes
from backbone_swap.evaluate.evaluator import Evaluator, _image_sizes
from backbone_swap.evaluate.runner import _load_image, probe_states
from backbone_swap.evaluate.suite import load_suite, read_items

WORDINGS = ("what colour is the shape?", "colour?", "name the colour of the shape in the picture",
            "answer with one word: which colour does the shape in the picture have, red, green, blue or yellow?")


@pytest.fixture(scope="module")
def many_per_image(tmp_path_factory):
    """Five images with several questions each, of different lengths (so batched rows need padding), and a
    question without an image."""
    root = tmp_path_factory.mktemp("probes")
    short = []
    for n, item in enumerate(scenes.colour_items(root / "images", 5, seed=7)):
        for k in range(2 + n % 3):
            short.append({**item, "id": f"{item['id']}-{k}", "question": WORDINGS[(n + k) % len(WORDINGS)]})
    short.append({"id": "text", "image": None, "question": "Which is wet, rain or sand?", "answer": "rain"})
    scenes.write_jsonl(short, root / "short.jsonl")
    (root / "suite.yaml").write_text(
        "name: probes\nprobes: 3\ntasks:\n"
        "  - {name: short, type: short_answer, needs: perception, data: short.jsonl, image_root: images,"
        " max_new_tokens: 5}\n"
    )
    return load_suite(root / "suite.yaml")


def _probe_alone(evaluator: Evaluator, image, question: str, answer: str, task) -> torch.Tensor:
    """The one-at-a-time computation probes had: the whole prompt and reply through the model with every hidden
    state returned, the last layer averaged over the reply's tokens."""
    prompt, reply = evaluator._prompt_and_reply(image is not None, question, answer, task)
    base = evaluator._inputs([image], [prompt])
    ids = torch.cat([base["input_ids"], torch.tensor([reply], device=evaluator.device)], dim=1)
    with torch.no_grad():
        out = evaluator.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=base.get("pixel_values"),
                              output_hidden_states=True, **_image_sizes([base]))
    return out.hidden_states[-1][0, -len(reply):].float().mean(dim=0).cpu()


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_batched_probe_states_equal_one_at_a_time(transplanted, many_per_image, llm):
    """Batches of 2 mixing prompts of different lengths, and a question without an image after those with one."""
    from backbone_swap.evaluate.runner import add_noise, paraphrase
    from backbone_swap.evaluate.tasks import reference_text

    task = many_per_image.task("short")
    evaluator = Evaluator(transplanted[llm], batch_size=2)
    items = read_items(task)
    states = probe_states(evaluator, task, len(items), seed=3, items=items)
    ordered = sorted(items, key=lambda it: (it["image"] is None, str(it["id"])))
    assert ordered[-1]["image"] is None
    for k, item in enumerate(ordered):
        image = _load_image(task, item)
        noisy = image if image is None else add_noise(image, 3 + k)
        answer = reference_text(item)
        for name, (picture, question) in {"clean": (image, item["question"]), "noise": (noisy, item["question"]),
                                          "paraphrase": (image, paraphrase(item["question"]))}.items():
            expected = _probe_alone(evaluator, picture, question, answer, task)
            assert torch.allclose(states[name][k], expected, rtol=1e-4, atol=1e-5), (name, item["id"])
