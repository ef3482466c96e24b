"""Images drawn with PIL and the questions about them: the offline data of the tests and the demo.

Every image is a function of a seed, so a data set can be regenerated bit for bit on any machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: int  # centre, pixels
    y: int
    radius: int


def draw(shapes: Iterable[Shape], size: int = 64, background: tuple[int, int, int] = (255, 255, 255)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    for s in shapes:
        box = (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius)
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            pen.ellipse(box, fill=fill)
        elif s.kind == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon(
                [(s.x, s.y - s.radius), (s.x - s.radius, s.y + s.radius), (s.x + s.radius, s.y + s.radius)], fill=fill
            )
    return image


def random_shape(rng: random.Random, size: int, *, colour: str | None = None) -> Shape:
    radius = rng.randint(size // 6, size // 3)
    return Shape(
        kind=rng.choice(SHAPES),
        colour=colour or rng.choice(list(COLOURS)),
        x=rng.randint(radius, size - radius - 1),
        y=rng.randint(radius, size - radius - 1),
        radius=radius,
    )


def colour_questions(folder: Path, n: int, *, seed: int, size: int = 64, prefix: str = "c") -> list[dict[str, Any]]:
    """``n`` one-shape images and "what colour" questions, as LLaVA training records (images in ``folder``)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    colours = list(COLOURS)
    for i in range(n):
        shape = random_shape(rng, size, colour=colours[i % len(colours)])
        name = f"{prefix}{i:05d}.png"
        draw([shape], size).save(folder / name)
        records.append(
            {
                "id": f"{prefix}{i:05d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nwhat colour is the shape?"},
                    {"from": "gpt", "value": shape.colour},
                ],
                "answer": shape.colour,
            }
        )
    rng.shuffle(records)
    return records


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def colour_items(
    folder: Path, n: int, *, seed: int, size: int = 64, prefix: str = "q", choices: bool = False
) -> list[dict[str, Any]]:
    """Evaluation items (id, image, question, answer[, choices]) for colour naming."""
    items = []
    for record in colour_questions(folder, n, seed=seed, size=size, prefix=prefix):
        item = {
            "id": record["id"],
            "image": record["image"],
            "question": "what colour is the shape?",
            "answer": record["answer"],
        }
        if choices:
            item["choices"] = list(COLOURS)
        items.append(item)
    return items


def example_suite(folder: Path, *, n: int = 12, seed: int = 0) -> Path:
    """The shipped example suite: one task of each type on drawn images (``recipes/suites/shapes``)."""
    import random as _random

    rng = _random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, list[dict[str, Any]]] = {"colour": [], "pick": [], "describe": [], "where": []}
    for i in range(n):
        shape = random_shape(rng, 64)
        name = f"s{i:03d}.png"
        draw([shape], 64).save(images / name)
        tasks["colour"].append(
            {"id": f"colour{i}", "image": name, "question": "what colour is the shape?", "answer": shape.colour}
        )
        tasks["pick"].append(
            {
                "id": f"pick{i}",
                "image": name,
                "question": "which shape is it?",
                "choices": list(SHAPES),
                "answer": shape.kind,
            }
        )
        tasks["describe"].append(
            {
                "id": f"describe{i}",
                "image": name,
                "question": "describe the picture",
                "answer": f"a {shape.colour} {shape.kind} on a white background",
            }
        )
        tasks["where"].append(
            {
                "id": f"where{i}",
                "image": name,
                "question": 'where is the centre of the shape? answer as json like {"x": 1, "y": 2}',
                "answer": json.dumps({"x": shape.x, "y": shape.y}),
            }
        )
    for task, items in tasks.items():
        write_jsonl(items, folder / f"{task}.jsonl")
    return folder
