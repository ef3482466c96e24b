"""The ``backbone-swap`` command line: parsing, one library call per command, and user-facing errors.

Options that several commands take are declared once below; options with a fixed set of values are enums, so Typer
refuses a value outside the set and ``--help`` lists it. Heavy libraries (torch, transformers) are imported inside
the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from backbone_swap.choices import BASELINES, DTYPES, LLM_KINDS, ON_BAD_SAMPLE, PROJECTORS, UPGRADE_STEPS, as_enum
from backbone_swap.errors import BackboneSwapError

app = typer.Typer(
    name="backbone-swap",
    help="Move a LLaVA-style VLM onto a newer LLM, retrain it the same way, and find out task by task "
    "whether it paid off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: option names are never cut short, flags show no value, logs stay readable
)

_state = {"debug": False}


def _usage_name(argument) -> str:
    """A required argument as usage lines write it by convention (``MODEL``); Typer's own writes ``{MODEL}``."""
    return argument.display_name_raw if argument.required else f"[{argument.display_name_raw}]"


if hasattr(typer.core, "TyperArgument") and hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_name  # every argument here takes one value


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


# -- choices ------------------------------------------------------------------------------------------
Dtype = as_enum("Dtype", DTYPES)
LlmKind = as_enum("LlmKind", LLM_KINDS)
Projector = as_enum("Projector", PROJECTORS)
OnBadSample = as_enum("OnBadSample", ON_BAD_SAMPLE)
Baseline = as_enum("Baseline", BASELINES)
Step = as_enum("Step", UPGRADE_STEPS)


def _value(choice: Any) -> Any:
    """The plain string of an enum choice (None stays None): what the library functions take."""
    return None if choice is None else choice.value


# -- options several commands take ------------------------------------------------------------------
AllowPickle = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow loading pickle (.bin) weights, which can run code.")
]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow custom model code shipped inside a checkpoint folder.")
]
VisionTower = Annotated[
    Path | None,
    typer.Option("--vision-tower", help="For a checkpoint of the original LLaVA training code: the local folder of "
                 "the vision tower its config names in mm_vision_tower (such checkpoints do not store it)."),
]
def _shipped(folder: str = "") -> str:
    """The names of the YAML files shipped in ``backbone_swap.recipes`` (or a folder of it), for the help."""
    from importlib import resources

    entries = resources.files("backbone_swap.recipes").joinpath(folder).iterdir() if folder else \
        resources.files("backbone_swap.recipes").iterdir()
    return ", ".join(sorted(e.name[: -len(".yaml")] for e in entries if e.name.endswith(".yaml")))


RecipeOption = Annotated[
    str, typer.Option(help=f"A shipped recipe ({_shipped()}) or a YAML file; both sides of an upgrade train with it.")
]
Data = Annotated[Path, typer.Option(help="LLaVA-format training conversations (.json or .jsonl).")]
ImageRoot = Annotated[Path | None, typer.Option(help="Folder the records' image paths are relative to.")]
SetKeys = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. stage2.lr=1e-4.")]
FeatureCache = Annotated[
    Path | None, typer.Option(help="Vision feature cache folder (default ~/.cache/backbone-swap/features).")
]
CacheFeatures = Annotated[
    bool, typer.Option(help="Keep vision features on disk (off: run the tower every batch, for data sets whose "
                       "features do not fit).")
]
SaveEvery = Annotated[int | None, typer.Option(
    help="Checkpoint training every N optimizer steps, to resume from after a stop; 0: only at the end of each "
         "stage. Default: 50 (under DeepSpeed, which cannot checkpoint inside a stage: 0).", min=0, metavar="N",
    show_default=False)]
BadSample = Annotated[OnBadSample, typer.Option(help="Stop at a record that cannot be used (training data or a "
                                                "task's items), or skip it (counted in the manifest).")]
SuiteOption = Annotated[str, typer.Option(help=f"A suite YAML file or a shipped suite ({_shipped('suites')}).")]
BatchSize = Annotated[int, typer.Option(help="Items per evaluation batch.")]
EvalDtype = Annotated[
    Dtype | None, typer.Option(help="Evaluate in this dtype (default: each checkpoint's own dtype on a GPU, float32 "
                               "on CPU).")
]
MinGain = Annotated[float, typer.Option(help="Smallest accuracy gain worth an upgrade, in percentage points as the "
                                        "report shows it (2: two points).")]
Device = Annotated[str | None, typer.Option(help="Where models are evaluated: cpu, cuda, cuda:1 ... (default: cuda "
                                            "if available).")]
Alpha = Annotated[float, typer.Option(help="Significance level of the paired tests.")]
Weights = Annotated[str | None, typer.Option(help="Task weights for the overall verdict: task=w,task2=w.")]
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples.")]
KindOption = Annotated[LlmKind, typer.Option(help="Whether the new LLM is a base or an instruction-tuned model "
                                             "(recorded, so comparisons can warn).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ChatTemplate = Annotated[
    Path | None,
    typer.Option("--chat-template", help="Jinja chat template file for the new LLM, instead of its own (an LLM "
                 "without one: a base model)."),
]


@app.command(epilog="Example: backbone-swap inspect llava-1.5-7b-hf --llm Meta-Llama-3-8B-Instruct")
def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A local VLM or LLM checkpoint folder.")],
    llm: Annotated[
        Path | None, typer.Option("--llm", help="A newer LLM: say whether it can receive PATH's vision tower.")
    ] = None,
    as_json: AsJson = False,
    vision_tower: VisionTower = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Show what is inside a checkpoint (from its config and weight index; no weights are loaded)."""
    from backbone_swap.checkpoints.anatomy import compatibility, read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint

    ckpt = open_checkpoint(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    tower = None
    if vision_tower is not None:
        tower = open_checkpoint(vision_tower, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    anatomy = read_anatomy(ckpt, vision_tower=tower)
    result: dict[str, Any] = anatomy.to_dict()
    if llm is not None:
        llm_ckpt = open_checkpoint(llm, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        llm_anatomy = read_anatomy(llm_ckpt)
        result = {"model": result, "llm": llm_anatomy.to_dict(),
                  "transplant": compatibility(anatomy, llm_anatomy, llm_ckpt).to_dict()}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from backbone_swap.checkpoints.view import print_inspection

    print_inspection(result)


@app.command(epilog=("Example: backbone-swap transplant --vlm llava-1.5-7b-hf --llm Meta-Llama-3-8B-Instruct -o "
                     "llava-llama3"))
def transplant(
    vlm: Annotated[Path, typer.Option("--vlm", help="The existing LLaVA or LLaVA-NeXT checkpoint (its vision side "
                                      "is kept), or one of the original LLaVA training code.")],
    llm: Annotated[Path, typer.Option("--llm", help="The newer causal LM to move it onto.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the new VLM checkpoint.")],
    vision_tower: VisionTower = None,
    seed: Annotated[int, typer.Option(help="Seed of the new projector's initialisation.")] = 0,
    projector: Annotated[
        Projector, typer.Option(help="new: a fresh projector for the new hidden size; reuse: copy the old one.")
    ] = Projector["new"],
    chat_template: ChatTemplate = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest weight file written, e.g. 5GB.")] = "5GB",
    llm_kind: KindOption = LlmKind["unknown"],
    dtype: Annotated[Dtype | None, typer.Option(help="Write every part in this dtype (default: each part keeps "
                                                "its dtype).")] = None,
    pad_vocab_to: Annotated[int | None, typer.Option(help="Round the vocabulary rows up to a multiple, e.g. 64.")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is whole).")]
    = False,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Build a new VLM: the old vision tower (bit-identical), a fresh projector, and the newer LLM."""
    from backbone_swap.transplant import transplant as run_transplant

    result = run_transplant(
        vlm, llm, output, seed=seed, projector=_value(projector), chat_template=chat_template, overwrite=overwrite,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, max_shard_size=max_shard_size,
        llm_kind=_value(llm_kind), dtype=_value(dtype), pad_vocab_to=pad_vocab_to, vision_tower=vision_tower,
    )
    changes = result.manifest["changes"]
    added = ", ".join(changes["added_tokens"]) or "none"
    typer.echo(f"wrote {result.output} (projector {changes['projector']['shape'][0]} -> "
               f"{changes['projector']['shape'][1]}, added tokens: {added})")


@app.command("train", epilog=("Example: backbone-swap train llava-llama3 --recipe llava15-lora --data "
                              "llava_v1_5_mix665k.json --image-root data/"))
def train_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL",
                                          help="A transplanted VLM folder (or any LLaVA checkpoint).")],
    recipe: RecipeOption,
    data: Data,
    image_root: ImageRoot = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: MODEL-trained).")] = None,
    set_: SetKeys = None,
    feature_cache: FeatureCache = None,
    cache_features: CacheFeatures = True,
    on_bad_sample: BadSample = OnBadSample["fail"],
    save_every: SaveEvery = None,
    resume: Annotated[bool, typer.Option(help="Continue the run already in OUTPUT.")] = False,
) -> None:
    """Train the projector, then projector + LoRA, with a fixed recipe; export adapter and merged model."""
    from backbone_swap.training.recipe import apply_overrides, load_recipe, recipe_hash
    from backbone_swap.training.train import train

    chosen = apply_overrides(load_recipe(recipe), list(set_ or []))
    # resolved first: "." or "model/.." have no name of their own
    out = output or model.expanduser().resolve().with_name(f"{model.expanduser().resolve().name}-trained")
    result = train(model, recipe=chosen, data=data, image_root=image_root, output=out, feature_cache=feature_cache,
                   cache_features=cache_features, on_bad_sample=_value(on_bad_sample), save_every=save_every,
                   resume=resume)
    m = result.manifest
    if not m:  # another process of a multi-process run: the main one reports
        return
    typer.echo(f"trained {model} with recipe {recipe_hash(chosen)[:12]} -> {out}/final (final loss "
               f"{m.get('final_loss', float('nan')):.4f}, {m['data']['samples']} samples, "
               f"{m['data']['skipped']} skipped)")


@app.command("eval", epilog="Example: backbone-swap eval llava-llama3-trained/final/merged --suite shapes -o ev/")
def eval_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A LLaVA checkpoint folder.")],
    suite: SuiteOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <task>.jsonl files (resumable).")],
    batch_size: BatchSize = 16,
    probes: Annotated[bool, typer.Option(help="Save hidden states of the probe items for stability.")] = True,
    device: Device = None,
    dtype: EvalDtype = None,
    on_bad_sample: BadSample = OnBadSample["fail"],
) -> None:
    """Answer every task of a suite: prediction, reference, correct, confidence per item."""
    from backbone_swap.evaluate.runner import evaluate
    from backbone_swap.evaluate.suite import load_suite

    loaded = load_suite(suite)
    result = evaluate(model, loaded, output, batch_size=batch_size, probes=probes, device=device,
                      dtype=_value(dtype), on_bad_sample=_value(on_bad_sample))
    if not result.manifest:  # another process of a multi-process run: the main one reports
        return
    typer.echo(f"evaluated {model} on {loaded.name} ({loaded.names()}) -> {output}")


suite_app = typer.Typer(help="Check an evaluation suite before evaluating on it.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")


@suite_app.command("show", epilog="Example: backbone-swap suite show shapes")
def suite_show(
    suite: Annotated[str, typer.Argument(metavar="SUITE", help="A suite YAML file or a shipped suite name.")],
    as_json: AsJson = False,
) -> None:
    """Each task: its benchmark or data file, type, needs, usable items, images found and missing, bad items."""
    from backbone_swap.evaluate.describe import describe_suite, print_suite
    from backbone_swap.evaluate.suite import load_suite

    loaded = load_suite(suite)
    tasks = describe_suite(loaded)
    if as_json:
        typer.echo(json.dumps({"suite": loaded.name, "tasks": tasks}, indent=2))
    else:
        print_suite(loaded.name, tasks)
    unreadable = [task for task in tasks if task["error"]]
    if unreadable:
        first = unreadable[0]
        others = f" ({len(unreadable) - 1} more tasks cannot be read either)" if len(unreadable) > 1 else ""
        raise BackboneSwapError(f"task {first['name']}: {first['error']}{others}", first["hint"] or "")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise BackboneSwapError(f"--alpha must lie between 0 and 1, not {alpha}", "Use e.g. --alpha 0.05")


def _fraction(points: float) -> float:
    """--min-gain in points (as the report shows accuracies) as the fraction the statistics take."""
    if not 0 <= points <= 100:
        raise BackboneSwapError(f"--min-gain is in percentage points, from 0 to 100, not {points}",
                                "Use e.g. --min-gain 2 for two points")
    return points / 100


def _print_verdict(comparison: dict[str, Any], report: Path) -> None:
    from rich.console import Console

    from backbone_swap.verdict.report import terminal_table, verdict_line

    console = Console()
    console.print(terminal_table(comparison))
    console.print(verdict_line(comparison), soft_wrap=True)
    console.print(f"report: {report}", highlight=False, markup=False, soft_wrap=True)


def parse_metrics(values: list[str] | None) -> dict[str, str]:
    """``--metric TASK=KEY`` (repeatable) as ``{task: key}``; a malformed or repeated one is refused."""
    found: dict[str, str] = {}
    for value in values or []:
        task, sep, key = value.partition("=")
        task, key = task.strip(), key.strip()
        if not sep or not task or not key:
            raise BackboneSwapError(f"--metric {value!r} is not TASK=KEY", "e.g. --metric mme=mme_perception_score")
        if task in found:
            raise BackboneSwapError(f"--metric names task {task!r} twice", "Give each task one per-sample score")
        found[task] = key
    return found


@app.command("compare", epilog=("Example: backbone-swap compare llava-1.5-7b-hf "
                                "llava-llama3-trained/final/merged --suite shapes -o cmp/"))
def compare_command(
    model_a: Annotated[Path, typer.Argument(metavar="A", help="A, usually the old VLM: a model folder, an lmms-eval "
                                            "log folder (--log_samples) or a LLaVA answer file (.jsonl).")],
    model_b: Annotated[Path, typer.Argument(metavar="B", help="B, usually the new VLM: the same kind of input as A.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for evaluations and the report.")],
    suite: Annotated[str | None, typer.Option(help="A suite YAML file or a shipped suite name (model folders and "
                                              "LLaVA answer files; lmms-eval logs name their own tasks).")] = None,
    task: Annotated[str | None, typer.Option(help="LLaVA answer files: the suite's task they answer (needed when "
                                             "the suite has several).")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="lmms-eval logs: TASK=KEY, the per-sample score to "
                                                     "compare where the choice is not automatic (repeatable).")]
    = None,
    min_gain: MinGain = 2.0,
    alpha: Alpha = 0.05,
    weights: Weights = None,
    resamples: Resamples = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the probe perturbations.")] = 0,
    batch_size: BatchSize = 16,
    dtype: EvalDtype = None,
    device: Device = None,
    on_bad_sample: BadSample = OnBadSample["fail"],
) -> None:
    """Compare A and B task by task and say, with the evidence, whether B beats A: two models (evaluated on a suite
    here), two lmms-eval runs (from their per-sample logs) or two LLaVA answer files (on a task of a suite)."""
    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.verdict.compare import compare, compare_answers, compare_logs
    from backbone_swap.verdict.decision import parse_weights
    from backbone_swap.verdict.harness_logs import source_of

    _check_alpha(alpha)
    sources = {side: source_of(path) for side, path in (("A", model_a), ("B", model_b))}
    if sources["A"] != sources["B"]:
        words = {"models": "a model folder", "lmms-eval": "an lmms-eval log folder",
                 "llava-answers": "a LLaVA answer file"}
        raise BackboneSwapError(f"A ({model_a}) is {words[sources['A']]} and B ({model_b}) {words[sources['B']]}",
                                "Compare two of a kind: two model folders, two lmms-eval log folders or two LLaVA "
                                "answer files")
    source = sources["A"]
    statistics = {"min_gain": _fraction(min_gain), "alpha": alpha, "weights": parse_weights(weights),
                  "n_resamples": resamples, "seed": seed}
    if metric and source != "lmms-eval":
        raise BackboneSwapError("--metric applies to lmms-eval logs only", "Leave it out")
    if task is not None and source != "llava-answers":
        raise BackboneSwapError("--task applies to LLaVA answer files only", "Leave it out")
    if source == "lmms-eval":
        if suite is not None:
            raise BackboneSwapError("--suite is not used with lmms-eval logs: they name their own tasks and hold "
                                    "their own references", "Leave it out")
        comparison = compare_logs(model_a, model_b, output, metrics=parse_metrics(metric), **statistics)
    elif suite is None:
        what = "two model folders" if source == "models" else "LLaVA's answer files"
        raise BackboneSwapError(f"comparing {what} needs --suite", "Pass --suite FILE or a shipped suite name")
    elif source == "llava-answers":
        comparison = compare_answers(model_a, model_b, load_suite(suite), output, task_name=task,
                                     on_bad_sample=_value(on_bad_sample), **statistics)
    else:
        comparison = compare(model_a, model_b, load_suite(suite), output, batch_size=batch_size, dtype=_value(dtype),
                             on_bad_sample=_value(on_bad_sample), device=device, **statistics)
    if comparison:  # empty in the processes of a multi-process launch other than the main one
        _print_verdict(comparison, output / "report.html")
    for line in comparison.get("warnings", []) if source != "models" else []:
        typer.echo(f"warning: {line}", err=True)


@app.command("upgrade", epilog=("Example: backbone-swap upgrade --vlm llava-1.5-7b-hf --llm Meta-Llama-3-8B-Instruct "
                                "--recipe llava15-lora --data llava_v1_5_mix665k.json --image-root data/ --suite "
                                "my-suite.yaml -o run/"))
def upgrade_command(
    vlm: Annotated[Path, typer.Option("--vlm", help="The existing LLaVA checkpoint.")],
    llm: Annotated[Path, typer.Option("--llm", help="The newer LLM to move it onto.")],
    recipe: RecipeOption,
    data: Data,
    suite: SuiteOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="The run folder (resumed when started again).")],
    image_root: ImageRoot = None,
    set_: SetKeys = None,
    baseline: Annotated[Baseline, typer.Option(help="as-is: compare with OLD as given; retrain: retrain OLD the "
                                               "same way.")] = Baseline["as-is"],
    old_llm: Annotated[Path | None, typer.Option(help="With --baseline retrain: the LLM OLD was built from.")] = None,
    restart: Annotated[Step | None, typer.Option(help="Redo from this step.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and the estimates, then stop.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the projector init, the bootstrap and the probes.")] = 0,
    min_gain: MinGain = 2.0,
    alpha: Alpha = 0.05,
    weights: Weights = None,
    resamples: Resamples = 10000,
    batch_size: BatchSize = 16,
    dtype: EvalDtype = None,
    feature_cache: FeatureCache = None,
    cache_features: CacheFeatures = True,
    save_every: SaveEvery = None,
    on_bad_sample: BadSample = OnBadSample["fail"],
    llm_kind: KindOption = LlmKind["unknown"],
    old_llm_kind: Annotated[LlmKind, typer.Option(help="The same for the LLM of the old VLM (or --old-llm).")]
    = LlmKind["unknown"],
    chat_template: ChatTemplate = None,
    old_chat_template: Annotated[Path | None, typer.Option(
        "--old-chat-template", help="The same for --old-llm with --baseline retrain.")] = None,
    vision_tower: VisionTower = None,
    device: Device = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Transplant, train with the fixed recipe, evaluate old and new, and recommend, in one run folder."""
    from rich.console import Console

    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.upgrade import UpgradeOptions, upgrade
    from backbone_swap.verdict.decision import parse_weights

    _check_alpha(alpha)
    console = Console()
    options = UpgradeOptions(
        vlm=vlm, llm=llm, recipe=apply_overrides(load_recipe(recipe), list(set_ or [])), data=data,
        image_root=image_root, suite=load_suite(suite), output=output, baseline=_value(baseline), old_llm=old_llm,
        seed=seed, min_gain=_fraction(min_gain), alpha=alpha, weights=parse_weights(weights), n_resamples=resamples,
        batch_size=batch_size, dtype=_value(dtype), feature_cache=feature_cache, cache_features=cache_features,
        save_every=save_every, on_bad_sample=_value(on_bad_sample), llm_kind=_value(llm_kind),
        old_llm_kind=_value(old_llm_kind), chat_template=chat_template, old_chat_template=old_chat_template,
        vision_tower=vision_tower, device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )

    def show(plan) -> None:
        console.print("[bold]plan[/bold]")
        for line in plan.lines:
            console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)  # a path is never cut

    result = upgrade(options, restart=_value(restart), dry_run=dry_run, on_plan=show)
    if dry_run or not result:  # not result: another process of a multi-process launch than the main one
        return
    _print_verdict(result, output / "compare" / "report.html")


@app.command("demo", epilog="Example: backbone-swap demo --quick")
def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="The demo folder (continued when started again).")]
    = Path("backbone-swap-demo"),
    quick: Annotated[bool, typer.Option(help="A smaller benchmark that finishes in about a minute.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the benchmark, the LLMs' pre-training and the run.")] = 0,
) -> None:
    """Run upgrade on a built-in benchmark: two tiny LLM generations pre-trained here, offline, on a CPU."""
    from rich.console import Console

    from backbone_swap.demo.run import run_demo
    from backbone_swap.verdict.decision import count_shown
    from backbone_swap.verdict.report import expectation_line, terminal_table, verdict_line

    console = Console()

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    comparison = run_demo(output, quick=quick, seed=seed, say=say)
    console.print(terminal_table(comparison))
    console.print(verdict_line(comparison), soft_wrap=True)
    expectations = comparison["expectations"]
    shown = count_shown(expectations)
    say(f"findings of the controlled study shown by this run: {shown} of {len(expectations)}")
    for entry in expectations:
        say(f"  {expectation_line(entry)}")
    say(f"report: {output / 'run' / 'compare' / 'report.html'}")


# click's usage error, from the copy of click this version of Typer uses (its own, in recent versions)
_UsageError = typer.BadParameter.__bases__[0]


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI and exit with its status, as the console script does.

    A user error is one line on stderr and exit code 1: a ``BackboneSwapError``, or a value an option does not take
    (outside its choices, or not a number), which Typer checks. A command line that cannot be parsed at all (an
    unknown command or option) is shown with its usage (exit code 2). Any other exception is a bug and keeps its
    traceback.
    """
    sys.exit(_run(argv))


def _quiet_libraries() -> None:
    """transformers' and the Hub's own bars ("Loading weights") would end up in a job's log file as lines of
    control characters; the commands report their progress themselves."""
    if sys.stderr.isatty() or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when the libraries are imported, here and in workers
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()


def _run(argv: list[str] | None) -> int:
    _quiet_libraries()
    try:
        code = app(args=argv, standalone_mode=False)
    except BackboneSwapError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except typer.BadParameter as e:
        where = f" See '{e.ctx.command_path} --help'." if e.ctx is not None else ""
        print(f"error: {e.format_message().replace('Value error, ', '')}{where}", file=sys.stderr)
        return 1
    except _UsageError as e:
        e.show()
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    if code == 130:  # Typer turns Ctrl-C into this exit code
        return _interrupted()
    return code if isinstance(code, int) else 0


def _interrupted() -> int:
    """Ctrl-C: every step writes atomically and resumes where it stopped, so the same command goes on."""
    from backbone_swap.progress import stop_all

    stop_all()
    print("interrupted: run the same command to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
    main()
