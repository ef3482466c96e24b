"""``backbone-swap demo``: the whole upgrade on the built-in benchmark, offline, in minutes on a CPU.

The demo folder holds what a user would hold: two LLM generations, a VLM whose vision side is reused,
training data and a suite (``inputs/``), then the ``upgrade`` run folder (``run/``) with its report.
Every preparation step is written atomically and skipped when found, and ``upgrade`` resumes by itself,
so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backbone_swap.demo import benchmark
from backbone_swap.demo import tiny_models as tm
from backbone_swap.runs import DEMO, RunFolder, staged_dir
from backbone_swap.verdict.decision import count_shown

RECIPE = "demo-cpu"
# The vision side the old VLM came with: a small CLIP, 4x4 patches of a 32-pixel image.
VISION = tm.VisionSpec(image_size=32, patch_size=8)


def _settings(quick: bool, seed: int) -> dict[str, Any]:
    size = benchmark.QUICK if quick else benchmark.FULL
    return {"quick": quick, "seed": seed, "size": asdict(size), "recipe": RECIPE}


def _step(folder: Path, say, label: str, build) -> Path:
    """Build ``folder`` in a staging folder beside it unless a finished one is there already."""
    if folder.exists():
        say(f"{label}: found {folder}")
        return folder
    started = time.time()
    say(f"{label} ...")
    with staged_dir(folder) as stage:
        build(stage)
    say(f"{label}: done in {time.time() - started:.0f} s")
    return folder


def _pretrain(stage: Path, generation: str, steps: int, seed: int, show_progress: bool) -> None:
    if not show_progress:
        benchmark.pretrain_llm(stage, generation, steps, seed=seed)
        return
    from backbone_swap.progress import progress_bar

    with progress_bar(f"pre-training {generation}", steps) as advance:
        benchmark.pretrain_llm(stage, generation, steps, seed=seed, advance=advance)


def prepare_inputs(output: Path, *, quick: bool = False, seed: int = 0, say=print,
                   show_progress: bool = False) -> dict[str, Path]:
    """The benchmark, the two LLM generations and the VLM providing the vision side, under ``output/inputs``."""
    size = benchmark.QUICK if quick else benchmark.FULL
    inputs = output / "inputs"
    data = _step(inputs / "benchmark", say, "drawing the benchmark images and questions",
                 lambda stage: benchmark.build_data(stage, size, seed=seed + 3))
    old = _step(inputs / "old-llm", say, f"pre-training the old LLM ({size.pretrain_steps_old} steps)",
                lambda stage: _pretrain(stage, "old", size.pretrain_steps_old, seed + 1, show_progress))
    new = _step(inputs / "new-llm", say, f"pre-training the newer LLM ({size.pretrain_steps_new} steps)",
                lambda stage: _pretrain(stage, "new", size.pretrain_steps_new, seed + 2, show_progress))
    vlm = _step(inputs / "vision-source", say, "building the VLM whose vision tower both sides use",
                lambda stage: tm.build_llava(stage, vision=VISION, seed=seed))
    return {"data": data / "train.jsonl", "images": data / "images", "suite": data / "suite.yaml",
            "old_llm": old, "new_llm": new, "vlm": vlm}


def run_demo(output: Path, *, quick: bool = False, seed: int = 0, show_progress: bool = True, say=print,
             callbacks: list | None = None) -> dict[str, Any]:
    """Prepare the inputs, run ``upgrade`` with ``--baseline retrain``, and return the comparison.

    With ``--baseline retrain`` the old VLM is built inside the run from the old LLM with the same recipe,
    data and seed as the new one, so the two sides differ only in the backbone, as in the controlled study.
    """
    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.training.recipe import load_recipe
    from backbone_swap.upgrade import UpgradeOptions, upgrade

    output = Path(output).expanduser().resolve()
    settings = _settings(quick, seed)
    folder = RunFolder(output, DEMO)
    previous = folder.previous()
    if previous is not None:
        folder.refuse_changed(previous.get("settings") or {}, settings,
                              "Pass the same settings to continue it, or a new folder with --output")
    folder.write_json("demo.json", {"settings": settings, "status": "running"})
    paths = prepare_inputs(output, quick=quick, seed=seed, say=say, show_progress=show_progress)
    options = UpgradeOptions(
        vlm=paths["vlm"], llm=paths["new_llm"], recipe=load_recipe(RECIPE), data=paths["data"],
        image_root=paths["images"], suite=load_suite(paths["suite"]), output=output / "run", baseline="retrain",
        old_llm=paths["old_llm"], seed=seed, feature_cache=output / "feature-cache",
        n_resamples=2000 if quick else 10000, show_progress=show_progress, callbacks=list(callbacks or []),
        save_every=20,
    )
    comparison = upgrade(options, on_plan=lambda plan: [say(f"  {line}") for line in plan.lines])
    folder.write_json("demo.json", {"settings": settings, "status": "finished",
                                    "report": str(output / "run" / "compare" / "report.html"),
                                    "findings_shown": count_shown(comparison["expectations"]),
                                    "findings_expected": len(comparison["expectations"])})
    return comparison
