"""Tiny benchmark release files, in exactly the layouts the benchmarks publish, with drawn images.

Each builder writes one benchmark's files into a folder (the file names as released) and returns the suite task
that reads them; the answers each test gives and the metrics they earn are worked out by hand in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), image_format: str | None = None) -> None:
    """A small drawn picture (a disc on a plain background)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", (32, 24), (240, 240, 240))
    ImageDraw.Draw(picture).ellipse((6, 4, 26, 20), fill=colour)
    picture.save(path, format=image_format)


def suite(folder: Path, *tasks: str, probes: int = 2) -> Path:
    (folder / "suite.yaml").write_text(f"probes: {probes}\ntasks:\n" + "".join(f"  - {task}\n" for task in tasks))
    return folder / "suite.yaml"


def textvqa(folder: Path, name: str = "text") -> str:
    """TextVQA_0.5.1_val.json: three questions on two images in train_images/ (val images live there)."""
    records = [
        ("34602", "0054c91397f2fe05", "what is written on the sign?", ["stop"] * 2 + ["stop sign"] * 8),
        ("34603", "0054c91397f2fe05", "what brand is the phone?", ["nokia"] * 10),
        ("34604", "00685bc495504d61", "what colours are the letters?", ["red white"] * 4 + ["red"] * 6),
    ]
    data = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
        {"question": question, "image_id": image_id, "image_classes": ["Sign"], "flickr_original_url": "",
         "flickr_300k_url": "", "image_width": 32, "image_height": 24, "answers": answers,
         "question_tokens": question.split(), "question_id": int(qid), "set_name": "val"}
        for qid, image_id, question, answers in records]}
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    for image_id in ("0054c91397f2fe05", "00685bc495504d61"):
        image(folder / "train_images" / f"{image_id}.jpg")
    return f"{{name: {name}, benchmark: textvqa, data: TextVQA_0.5.1_val.json, image_root: train_images}}"


def gqa(folder: Path, name: str = "gqa") -> str:
    """testdev_balanced_questions.json: five questions on two images, one of them not balanced."""
    def question(image_id, text, answer, structural, semantic, entailed, balanced=True):
        return {"semantic": [{"operation": "select", "dependencies": [], "argument": "ball (1)"}],
                "entailed": entailed, "equivalent": [], "question": text, "imageId": image_id,
                "isBalanced": balanced, "groups": {"global": None, "local": "10q-ball_color"}, "answer": answer,
                "semanticStr": "select: ball", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                "types": {"detailed": "verifyAttr", "semantic": semantic, "structural": structural},
                "fullAnswer": f"The answer is {answer}."}

    questions = {
        "201": question("n1", "Is the ball red?", "yes", "verify", "attr", ["202"]),
        "202": question("n1", "What colour is the ball?", "red", "query", "attr", ["201"]),
        "203": question("n2", "Which side is the cup on?", "left", "choose", "rel", []),
        "204": question("n2", "Is there a dog?", "no", "verify", "obj", [], balanced=False),
        "205": question("n1", "What is red?", "ball", "query", "obj", ["201", "202", "205"]),
    }
    (folder / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    for image_id in ("n1", "n2"):
        image(folder / "images" / f"{image_id}.jpg", (30, 30, 200))
    return f"{{name: {name}, benchmark: gqa, questions: testdev_balanced_questions.json, image_root: images}}"


def scienceqa(folder: Path, name: str = "sqa", *, include_text_only: bool = False) -> str:
    """problems.json and pid_splits.json: four test questions (two with an image), one train question."""
    def problem(question, choices, answer, hint, with_image, subject, grade, split="test"):
        return {"question": question, "choices": choices, "answer": answer, "hint": hint,
                "image": "image.png" if with_image else None, "task": "closed choice", "grade": grade,
                "subject": subject, "topic": "biology", "category": "Classify", "skill": "", "lecture": "",
                "solution": "", "split": split}

    problems = {
        "1": problem("Which is a mammal?", ["frog", "dog", "trout"], 1, "Select the best answer.", True,
                     "natural science", "grade2"),
        "2": problem("Which word is a noun?", ["run", "table"], 1, "", True, "language science", "grade8"),
        "3": problem("How many apples does Tom have left?", ["two", "three"], 0, "Tom had 3 apples and ate one.",
                     False, "social science", "grade5"),
        "4": problem("Which is a liquid?", ["milk", "rock"], 0, "", False, "natural science", "grade10"),
        "5": problem("Which is a bird?", ["owl", "cat"], 0, "", True, "natural science", "grade3", split="train"),
    }
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"train": ["5"], "val": [], "test": ["1", "2", "3", "4"]}))
    for split, pid in (("test", "1"), ("test", "2"), ("train", "5")):
        image(folder / "images" / split / pid / "image.png", (30, 160, 30))
    extra = ", include_text_only: true" if include_text_only else ""
    return (f"{{name: {name}, benchmark: scienceqa, problems: problems.json, splits: pid_splits.json, "
            f"image_root: images{extra}}}")


def seedbench(folder: Path, name: str = "seed") -> str:
    """SEED-Bench.json: three image questions (one image named by its data_id alone, one with .jpg) and a video
    question."""
    def question(qid, text, choices, answer, data_id, data_type, type_id):
        return {"answer": answer, "choice_a": choices[0], "choice_b": choices[1], "choice_c": choices[2],
                "choice_d": choices[3], "data_id": data_id, "data_type": data_type, "question": text,
                "question_id": qid, "question_type_id": type_id}

    data = {"questions": [
        question("101669", "How many towels are in the image?", ["One", "Two", "Three", "Four"], "A",
                 "1454426_2591111986", "image", 5),
        question("102", "Where is the scene?", ["a beach", "a street", "a park", "a kitchen"], "C", "img2", "image", 1),
        question("103", "What time of day is it?", ["night", "day", "dusk", "dawn"], "B", "img2", "image", 1),
        question("v1738", "What is the action being carried out in the video?", ["a", "b", "c", "d"], "B",
                 "94328.webm", "video", 10),
    ], "question_type": {"Scene Understanding": 1, "Instances Counting": 5, "Action Recognition": 10}}
    (folder / "SEED-Bench.json").write_text(json.dumps(data))
    image(folder / "SEED-Bench-image" / "1454426_2591111986", (200, 200, 30), image_format="JPEG")
    image(folder / "SEED-Bench-image" / "img2.jpg", (200, 200, 30))
    return f"{{name: {name}, benchmark: seedbench, data: SEED-Bench.json, image_root: SEED-Bench-image}}"
