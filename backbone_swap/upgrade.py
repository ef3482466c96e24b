"""``backbone-swap upgrade``: inspect, transplant, train, evaluate both sides and compare, in one run folder.

Nothing here decides anything the single commands do not: each step is the library function of its
command, its output lives in its own folder of the run, and ``RUN/manifest.json`` records which steps
are done, so a run started again continues where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone_swap.choices import BASELINES, LLM_KINDS, UPGRADE_STEPS, check
from backbone_swap.errors import BackboneSwapError
from backbone_swap.plan import Plan, plan
from backbone_swap.progress import labelled, say
from backbone_swap.runs import UPGRADE, RunFolder, resolved, versions
from backbone_swap.training.recipe import Recipe, recipe_hash, recipe_to_dict


@dataclass
class UpgradeOptions:
    vlm: Path
    llm: Path
    recipe: Recipe
    data: Path
    image_root: Path | None
    suite: Any  # evaluate.suite.Suite
    output: Path
    baseline: str = "as-is"
    old_llm: Path | None = None
    seed: int = 0
    min_gain: float = 0.02
    alpha: float = 0.05
    weights: dict[str, float] | None = None
    n_resamples: int = 10000
    batch_size: int = 16
    dtype: str | None = None
    feature_cache: Path | None = None
    cache_features: bool = True  # off: the vision tower runs on every batch (features that would not fit)
    save_every: int | None = None
    on_bad_sample: str = "fail"
    llm_kind: str = "unknown"
    chat_template: Path | None = None  # replaces the new LLM's template (a base LLM has none)
    old_chat_template: Path | None = None  # the same for --old-llm with --baseline retrain
    old_llm_kind: str = "unknown"  # the LLM inside the old VLM (or --old-llm): base, instruct or unknown
    device: str | None = None  # where evaluation runs (default: cuda if available)
    allow_pickle: bool = False  # read pickle weights of the inputs (they can run code)
    trust_remote_code: bool = False  # allow custom model code shipped inside the inputs
    vision_tower: Path | None = None  # the tower of an original LLaVA checkpoint, which does not store it
    show_progress: bool = True
    callbacks: list = field(default_factory=list)


def _run_paths(output: Path) -> dict[str, Path]:
    return {
        "transplant": output / "transplant",
        "baseline-transplant": output / "baseline" / "transplant",
        "baseline": output / "baseline" / "train",
        "train": output / "train",
        "eval-old": output / "eval" / "old",
        "eval-new": output / "eval" / "new",
        "compare": output / "compare",
    }


class _Run:
    """The run folder's manifest: which steps are done, with their outputs and timings."""

    def __init__(self, folder: RunFolder, options: UpgradeOptions, plan_: Plan, restart: str | None, *,
                 main: bool = True) -> None:
        self.folder, self.options, self.main = folder, options, main  # other processes keep the record, no files
        identity = {
            "vlm": str(options.vlm.resolve()), "llm": str(options.llm.resolve()),
            "data": str(options.data.resolve()), "suite": options.suite.source or options.suite.name,
            "recipe_hash": recipe_hash(options.recipe), "baseline": options.baseline, "seed": options.seed,
        }
        for key in ("chat_template", "old_chat_template"):  # None: the LLM's own template
            path = getattr(options, key)
            identity[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path is not None else None
        previous = folder.previous()
        if previous and restart != "transplant":
            folder.refuse_changed(previous.get("identity", {}), identity,
                                  "Choose another --output, or pass --restart transplant to redo it all")
        self.data = previous or {}
        inputs = {key: resolved(getattr(options, key)) for key in (
            "vlm", "llm", "old_llm", "vision_tower", "data", "image_root", "chat_template", "old_chat_template",
            "feature_cache", "output")}
        self.data.update(command="upgrade", identity=identity, inputs=inputs, recipe=recipe_to_dict(options.recipe),
                         plan=plan_.to_dict(), versions=versions())
        self.data.setdefault("steps", {})
        if restart is not None:
            paths = _run_paths(Path(resolved(options.output)))
            for step in UPGRADE_STEPS[UPGRADE_STEPS.index(restart):]:
                self.data["steps"].pop(step, None)
                for key, path in paths.items():
                    if main and (key == step or (step == "baseline" and key == "baseline-transplant")):
                        shutil.rmtree(path, ignore_errors=True)
        self.save()

    def done(self, step: str) -> bool:
        return self.data["steps"].get(step, {}).get("status") == "done"

    def finish(self, step: str, started: float, **fields: Any) -> None:
        self.data["steps"][step] = {"status": "done", "seconds": round(time.time() - started, 3), **fields}
        self.save()

    def save(self) -> None:
        if self.main:
            self.folder.write_json("manifest.json", self.data)


def _check_choices(options: UpgradeOptions, restart: str | None) -> None:
    """The choices a library caller may get wrong (the CLI's enums refuse them earlier), checked before the plan."""
    check(options.baseline, BASELINES, "--baseline")
    if options.baseline == "retrain" and options.old_llm is None:
        raise BackboneSwapError("--baseline retrain needs the LLM the old VLM was built from",
                                "Pass it with --old-llm PATH")
    for flag, kind in (("--llm-kind", options.llm_kind), ("--old-llm-kind", options.old_llm_kind)):
        check(kind, LLM_KINDS, flag, "Say whether that LLM is a base or an instruction-tuned model")
    if restart is not None:
        check(restart, UPGRADE_STEPS, "--restart")


def upgrade(options: UpgradeOptions, *, restart: str | None = None, dry_run: bool = False,
            on_plan=None) -> dict[str, Any]:
    """Run (or continue) the whole upgrade; returns the comparison, or the plan with ``dry_run`` (an empty dict in
    the processes of a multi-process launch other than the main one)."""
    from backbone_swap.training.train import train
    from backbone_swap.verdict.compare import compare

    _check_choices(options, restart)
    # under accelerate launch / torchrun: training and evaluation share the processes, and the main one writes
    # what is written once (transplants, the manifest, the report)
    state = _launch_state()
    main = state is None or state.is_main_process
    the_plan = plan(options)
    if on_plan and main:
        on_plan(the_plan)
    if dry_run:
        return {"plan": the_plan.to_dict()}
    folder = RunFolder(options.output, UPGRADE)
    folder.previous()  # never a folder of other files, in which the run would overwrite or delete what is there
    with folder.hold(state):
        run = _Run(folder, options, the_plan, restart, main=main)
        paths = _run_paths(Path(resolved(options.output)))
        common = dict(recipe=options.recipe, data=options.data, image_root=options.image_root,
                      feature_cache=options.feature_cache, cache_features=options.cache_features,
                      on_bad_sample=options.on_bad_sample,
                      save_every=options.save_every, resume=True, callbacks=options.callbacks,
                      show_progress=options.show_progress)

        def on_main(work) -> None:
            if main:
                work()
            if state is not None:
                state.wait_for_everyone()

        steps = [s for s in UPGRADE_STEPS if s != "baseline" or options.baseline == "retrain"]

        def begin(step: str, side: str) -> bool:
            """Whether ``step`` is to be run; says so, or that an earlier start of the run finished it."""
            if main and options.show_progress:
                position = f"step {steps.index(step) + 1} of {len(steps)}"
                with labelled(side):
                    if run.done(step):
                        say(f"{step} ({position}): done in an earlier start, reused from "
                            f"{run.data['steps'][step].get('output', paths[step])}")
                    else:
                        say(f"{step} ({position})")
            return not run.done(step)

        if begin("transplant", "new"):
            started = time.time()
            with labelled("new"):
                on_main(lambda: _transplant(options, options.llm, paths["transplant"], options.llm_kind,
                                            options.chat_template))
            run.finish("transplant", started, output=str(paths["transplant"]))
        old_model = options.vlm
        if options.baseline == "retrain":
            if begin("baseline", "old"):
                started = time.time()
                with labelled("old"):
                    on_main(lambda: _transplant(options, options.old_llm, paths["baseline-transplant"],
                                                options.old_llm_kind, options.old_chat_template))
                    train(paths["baseline-transplant"], output=paths["baseline"], **common)
                run.finish("baseline", started, output=str(paths["baseline"] / "final" / "merged"))
            old_model = paths["baseline"] / "final" / "merged"
        if begin("train", "new"):
            started = time.time()
            with labelled("new"):
                result = train(paths["transplant"], output=paths["train"], **common)
            run.finish("train", started, output=str(paths["train"] / "final" / "merged"),
                       final_loss=result.manifest.get("final_loss"))
        new_model = paths["train"] / "final" / "merged"
        from backbone_swap.evaluate.runner import evaluate

        for step, side, model in (("eval-old", "old", old_model), ("eval-new", "new", new_model)):
            if begin(step, side):
                started = time.time()
                with labelled(side):
                    evaluate(model, options.suite, paths[step], batch_size=options.batch_size, seed=options.seed,
                             dtype=options.dtype, show_progress=options.show_progress,
                             on_bad_sample=options.on_bad_sample, device=options.device)
                run.finish(step, started, output=str(paths[step]))
        if main and options.show_progress:
            say(f"compare (step {len(steps)} of {len(steps)})")
        started = time.time()
        # the comparison is always made again (its evaluations live outside its folder): a report a stopped run
        # left half written goes first
        on_main(lambda: shutil.rmtree(paths["compare"], ignore_errors=True))
        comparison = compare(
            old_model, new_model, options.suite, paths["compare"], min_gain=options.min_gain, alpha=options.alpha,
            weights=options.weights, n_resamples=options.n_resamples, seed=options.seed, batch_size=options.batch_size,
            baseline=options.baseline, eval_dirs=(paths["eval-old"], paths["eval-new"]), dtype=options.dtype,
            extra_warnings=_kind_warning(options), show_progress=options.show_progress,
            on_bad_sample=options.on_bad_sample, device=options.device,
        )
        if main:
            run.finish("compare", started, output=str(paths["compare"]), verdict=comparison["overall"]["verdict"])
        return comparison


def _launch_state():
    """accelerate's state of a multi-process launch (None in one process, which then needs no process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    from backbone_swap.training.schemes import launch_state

    return launch_state()


def _transplant(options: UpgradeOptions, llm: Path, output: Path, llm_kind: str, chat_template: Path | None) -> None:
    from backbone_swap.transplant import transplant

    shutil.rmtree(output, ignore_errors=True)  # what a stopped transplant left
    transplant(options.vlm, llm, output, seed=options.seed, llm_kind=llm_kind, chat_template=chat_template,
               allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code,
               vision_tower=options.vision_tower)


def _kind_warning(options: UpgradeOptions) -> list[str]:
    """Base against instruction-tuned, for an old VLM taken as it is (a retrained baseline's transplant records
    its LLM's kind, which the comparison reads itself)."""
    kinds = {options.old_llm_kind, options.llm_kind} - {"unknown"}
    if options.baseline != "as-is" or len(kinds) != 2:
        return []
    return [f"one LLM is a base model and the other instruction-tuned (A {options.old_llm_kind}, "
            f"B {options.llm_kind})"]
