"""The ``backbone-swap`` command line: parsing, one library call per command, and user-facing errors.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from backbone_swap.errors import BackboneSwapError

app = typer.Typer(
    name="backbone-swap",
    help="Move a LLaVA-style VLM onto a newer LLM, retrain it the same way, and find out task by task "
    "whether it paid off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


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


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A local VLM or LLM checkpoint folder.")],
    llm: Annotated[
        Path | None, typer.Option("--llm", help="A newer LLM: say whether it can receive PATH's vision tower.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
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


@app.command()
def transplant(
    vlm: Annotated[Path, typer.Option("--vlm", help="The existing LLaVA or LLaVA-NeXT checkpoint (its vision side "
                                      "is kept), or one of the original LLaVA training code.")],
    llm: Annotated[Path, typer.Option("--llm", help="The newer causal LM to move it onto.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the new VLM checkpoint.")],
    vision_tower: VisionTower = None,
    seed: Annotated[int, typer.Option(help="Seed of the new projector's initialisation.")] = 0,
    projector: Annotated[
        str, typer.Option(help="'new': fresh projector for the new hidden size; 'reuse': copy the old one.")
    ] = "new",
    chat_template: Annotated[
        Path | None, typer.Option("--chat-template", help="Jinja chat template file to use instead of the LLM's.")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest weight file written, e.g. 5GB.")] = "5GB",
    llm_kind: Annotated[str, typer.Option(help="base, instruct or unknown: recorded so comparisons can warn.")]
    = "unknown",
    dtype: Annotated[str | None, typer.Option(help="Write every part in float32, bfloat16 or float16 "
                                             "(default: each part keeps its dtype).")] = None,
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
        vlm, llm, output, seed=seed, projector=projector, chat_template=chat_template, overwrite=overwrite,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, max_shard_size=max_shard_size,
        llm_kind=llm_kind, dtype=dtype, pad_vocab_to=pad_vocab_to, vision_tower=vision_tower,
    )
    changes = result.manifest["changes"]
    added = ", ".join(changes["added_tokens"]) or "none"
    typer.echo(f"wrote {result.output} (projector {changes['projector']['shape'][0]} -> "
               f"{changes['projector']['shape'][1]}, added tokens: {added})")


@app.command("train")
def train_command(
    model: Annotated[Path, typer.Argument(help="A transplanted VLM folder (or any LLaVA checkpoint).")],
    recipe: Annotated[str, typer.Option(help="A shipped recipe (llava15-lora, tiny-cpu, demo-cpu) or a YAML file.")],
    data: Annotated[Path, typer.Option(help="LLaVA-format conversations (.json or .jsonl).")],
    image_root: Annotated[Path | None, typer.Option(help="Folder the records' image paths are relative to.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: MODEL-trained).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. stage2.lr=1e-4.")]
    = None,
    feature_cache: Annotated[Path | None, typer.Option(help="Vision feature cache (default ~/.cache/backbone-swap).")]
    = None,
    cache_features: Annotated[bool, typer.Option(help="Keep vision features on disk (off: run the tower every "
                                                      "batch, for data sets whose features do not fit).")] = True,
    on_bad_sample: Annotated[str, typer.Option(help="fail (default) or skip bad records, counted in the manifest.")]
    = "fail",
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N optimizer steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run already in OUTPUT.")] = False,
) -> None:
    """Train the projector, then projector + LoRA, with a fixed recipe; export adapter and merged model."""
    from backbone_swap.training.recipe import apply_overrides, load_recipe, recipe_hash
    from backbone_swap.training.train import train

    chosen = apply_overrides(load_recipe(recipe), list(set_ or []))
    # resolved first: "." or "model/.." have no name of their own
    out = output or model.expanduser().resolve().with_name(f"{model.expanduser().resolve().name}-trained")
    result = train(model, recipe=chosen, data=data, image_root=image_root, output=out, feature_cache=feature_cache,
                   cache_features=cache_features, on_bad_sample=on_bad_sample, save_every=save_every, resume=resume)
    m = result.manifest
    if not m:  # another process of a multi-process run: the main one reports
        return
    typer.echo(f"trained {model} with recipe {recipe_hash(chosen)[:12]} -> {out}/final (final loss "
               f"{m.get('final_loss', float('nan')):.4f}, {m['data']['samples']} samples, "
               f"{m['data']['skipped']} skipped)")


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Argument(help="A LLaVA checkpoint folder.")],
    suite: Annotated[str, typer.Option(help="A suite YAML file or a shipped suite name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <task>.jsonl files (resumable).")],
    batch_size: Annotated[int, typer.Option(help="Items per generation batch.")] = 16,
    probes: Annotated[bool, typer.Option(help="Save hidden states of the probe items for stability.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Evaluate in float32, bfloat16 or float16 (default: each "
                                             "checkpoint's own dtype on a GPU, float32 on CPU).")] = None,
) -> None:
    """Answer every task of a suite: prediction, reference, correct, confidence per item."""
    from backbone_swap.evaluate.runner import evaluate
    from backbone_swap.evaluate.suite import load_suite

    loaded = load_suite(suite)
    result = evaluate(model, loaded, output, batch_size=batch_size, probes=probes, device=device, dtype=dtype)
    if not result.manifest:  # another process of a multi-process run: the main one reports
        return
    typer.echo(f"evaluated {model} on {loaded.name} ({loaded.names()}) -> {output}")


@app.command("compare")
def compare_command(
    model_a: Annotated[Path, typer.Argument(help="Model A, usually the old VLM.")],
    model_b: Annotated[Path, typer.Argument(help="Model B, usually the new VLM.")],
    suite: Annotated[str, typer.Option(help="A suite YAML file or a shipped suite name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for evaluations and the report.")],
    min_gain: Annotated[float, typer.Option(help="Smallest accuracy gain (absolute) worth an upgrade.")] = 0.02,
    alpha: Annotated[float, typer.Option(help="Significance level of the paired tests.")] = 0.05,
    weights: Annotated[str | None, typer.Option(help="Task weights for the overall verdict: task=w,task2=w.")]
    = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the probe perturbations.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Items per generation batch.")] = 16,
    dtype: Annotated[str | None, typer.Option(help="Evaluate in float32, bfloat16 or float16 (default: each "
                                             "checkpoint's own dtype on a GPU, float32 on CPU).")] = None,
) -> None:
    """Evaluate A and B on a suite and say, task by task and with the evidence, whether B beats A."""
    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.verdict.compare import compare
    from backbone_swap.verdict.decision import parse_weights
    from backbone_swap.verdict.report import terminal_table

    if not 0 < alpha < 1:
        raise BackboneSwapError(f"--alpha must lie between 0 and 1, not {alpha}", "Use e.g. --alpha 0.05")
    comparison = compare(model_a, model_b, load_suite(suite), output, min_gain=min_gain, alpha=alpha,
                         weights=parse_weights(weights), n_resamples=resamples, seed=seed, batch_size=batch_size,
                         dtype=dtype)
    from rich.console import Console

    if not comparison:  # another process of a multi-process launch than the main one
        return
    console = Console()
    console.print(terminal_table(comparison))
    console.print(f"overall: {comparison['overall']['verdict']}; report: {output / 'report.html'}")


@app.command("upgrade")
def upgrade_command(
    vlm: Annotated[Path, typer.Option("--vlm", help="The existing LLaVA checkpoint.")],
    llm: Annotated[Path, typer.Option("--llm", help="The newer LLM to move it onto.")],
    recipe: Annotated[str, typer.Option(help="A shipped recipe name or a YAML file; both sides train with it.")],
    data: Annotated[Path, typer.Option(help="LLaVA-format training conversations (.json or .jsonl).")],
    suite: Annotated[str, typer.Option(help="A suite YAML file or a shipped suite name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The run folder (resumed when started again).")],
    image_root: Annotated[Path | None, typer.Option(help="Folder the training images are relative to.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. stage2.lr=1e-4.")]
    = None,
    baseline: Annotated[str, typer.Option(help="as-is: compare with OLD as given; retrain: retrain OLD the same way.")]
    = "as-is",
    old_llm: Annotated[Path | None, typer.Option(help="With --baseline retrain: the LLM OLD was built from.")] = None,
    restart: Annotated[str | None, typer.Option(help="Redo from this step: " + ", ".join(
        ("transplant", "baseline", "train", "eval-old", "eval-new", "compare")) + ".")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and the estimates, then stop.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the projector init, the bootstrap and the probes.")] = 0,
    min_gain: Annotated[float, typer.Option(help="Smallest accuracy gain worth an upgrade.")] = 0.02,
    alpha: Annotated[float, typer.Option(help="Significance level of the paired tests.")] = 0.05,
    weights: Annotated[str | None, typer.Option(help="Task weights for the overall verdict: task=w,...")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 10000,
    batch_size: Annotated[int, typer.Option(help="Items per evaluation batch.")] = 16,
    dtype: Annotated[str | None, typer.Option(help="Evaluate in float32, bfloat16 or float16 (default: each "
                                             "checkpoint's own dtype on a GPU, float32 on CPU).")] = None,
    feature_cache: Annotated[Path | None, typer.Option(help="Vision feature cache folder.")] = None,
    cache_features: Annotated[bool, typer.Option(help="Keep vision features on disk (off: run the tower every "
                                                      "batch, for data sets whose features do not fit).")] = True,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint training every N optimizer steps.")] = 50,
    on_bad_sample: Annotated[str, typer.Option(help="fail or skip bad training records.")] = "fail",
    llm_kind: Annotated[str, typer.Option(help="base, instruct or unknown (recorded for the confound check).")]
    = "unknown",
    old_llm_kind: Annotated[str, typer.Option(help="The same for the LLM of the old VLM (or --old-llm): base, "
                                                   "instruct or unknown.")] = "unknown",
    chat_template: Annotated[Path | None, typer.Option(
        "--chat-template", help="Jinja chat template file for the new LLM (one without a template: a base model).")]
    = None,
    old_chat_template: Annotated[Path | None, typer.Option(
        "--old-chat-template", help="The same for --old-llm with --baseline retrain.")] = None,
) -> None:
    """Transplant, train with the fixed recipe, evaluate old and new, and recommend, in one run folder."""
    from rich.console import Console

    from backbone_swap.evaluate.suite import load_suite
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.upgrade import UpgradeOptions, upgrade
    from backbone_swap.verdict.decision import parse_weights
    from backbone_swap.verdict.report import terminal_table

    console = Console()
    options = UpgradeOptions(
        vlm=vlm, llm=llm, recipe=apply_overrides(load_recipe(recipe), list(set_ or [])), data=data,
        image_root=image_root, suite=load_suite(suite), output=output, baseline=baseline, old_llm=old_llm,
        seed=seed, min_gain=min_gain, alpha=alpha, weights=parse_weights(weights), n_resamples=resamples,
        batch_size=batch_size, dtype=dtype, feature_cache=feature_cache, cache_features=cache_features,
        save_every=save_every, on_bad_sample=on_bad_sample, llm_kind=llm_kind, old_llm_kind=old_llm_kind,
        chat_template=chat_template, old_chat_template=old_chat_template,
    )

    def show(plan) -> None:
        console.print("[bold]plan[/bold]")
        for line in plan.lines:
            console.print(f"  {line}", highlight=False, markup=False)

    result = upgrade(options, restart=restart, dry_run=dry_run, on_plan=show)
    if dry_run or not result:  # not result: another process of a multi-process launch than the main one
        return
    console.print(terminal_table(result))
    console.print(f"overall: {result['overall']['verdict']}; report: {output / 'compare' / 'report.html'}")


@app.command("demo")
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
    from backbone_swap.verdict.report import expectation_line, terminal_table

    console = Console()

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    comparison = run_demo(output, quick=quick, seed=seed, say=say)
    console.print(terminal_table(comparison))
    expectations = comparison["expectations"]
    shown = count_shown(expectations)
    say(f"findings of the controlled study shown by this run: {shown} of {len(expectations)}")
    for entry in expectations:
        say(f"  {expectation_line(entry)}")
    say(f"report: {output / 'run' / 'compare' / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a ``BackboneSwapError`` becomes one line on stderr and exit code 1.

    Usage errors are click's (exit code 2); any other exception is a bug and keeps its traceback.
    """
    try:
        app(args=argv, standalone_mode=True)
    except BackboneSwapError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
