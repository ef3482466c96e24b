"""Tiny benchmark files in their official release layouts, drawn here: images, suites, base64 PNGs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)) -> Path:
    """A small drawn picture: a coloured square on white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(picture).rectangle((4, 4, size[0] - 5, size[1] - 5), fill=colour)
    picture.save(path)
    return path


def png_base64(colour: tuple[int, int, int] = (30, 120, 200)) -> str:
    """A small drawn PNG as the base64 text MMBench's TSV holds in its image column."""
    buffer = io.BytesIO()
    picture = Image.new("RGB", (28, 28), (255, 255, 255))
    ImageDraw.Draw(picture).ellipse((4, 4, 23, 23), fill=colour)
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def suite(folder: Path, *tasks: str, probes: int = 0) -> Path:
    """A suite file beside the benchmark files, one task per flow mapping."""
    path = folder / "suite.yaml"
    path.write_text(f"probes: {probes}\ntasks:\n" + "".join(f"  - {task}\n" for task in tasks))
    return path


def json_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def answers(folder: Path, task: str) -> list[dict]:
    """The answer lines ``eval`` wrote for a task."""
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
