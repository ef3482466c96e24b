"""``backbone-swap compare``: two VLMs on the same items, task by task, with the evidence and a verdict.

Both models are evaluated (or their finished evaluations reused), the per-item results are paired by
id, and each task gets the statistics of ``stats`` (paired bootstrap, McNemar, overlap, calibration,
stability) before ``decision`` turns them into a verdict and ``report`` writes it down.

Other tools' outputs take the same path from the answer lines on: ``compare_logs`` reads two lmms-eval
``--log_samples`` folders, ``compare_answers`` two answer files of LLaVA's evaluation scripts (``harness_logs``
reads both); ``paired_statistics`` and ``conclude`` are shared, so every input gets the same numbers and report.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.runner import read_answers
from backbone_swap.evaluate.suite import Suite, Task, read_items
from backbone_swap.evaluate.tasks import TYPES, TaskType, full_credit_rule, reference_text
from backbone_swap.runs import COMPARISON, RunFolder, resolved
from backbone_swap.verdict import stats


def _lines(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise BackboneSwapError(f"{path} is missing", "Run backbone-swap eval for both models first")
    return {line["id"]: line for line in read_answers(path)}


def _stability(eval_dir: Path, task: Task) -> float | None:
    """Mean linear CKA between clean and perturbed (noisy image, reworded question) hidden states."""
    path = eval_dir / "probes" / f"{task.name}.safetensors"
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    states = load_file(path)
    if states["clean"].shape[0] < 2:
        return None
    return float(np.mean([stats.linear_cka(states["clean"], states[k]) for k in ("noise", "paraphrase")]))


def _rescore(lines: dict[str, dict[str, Any]], items: dict[str, dict[str, Any]], task: Task,
             path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Every answer scored again from its raw output against the task's current reference and rules.

    Evaluation keeps the raw outputs so that a corrected reference, a changed tolerance or a fixed scoring
    rule reaches every comparison without running the models again; the count says how many scores moved.
    """
    kind = TYPES[task.type]
    rescored, moved = {}, 0
    for key, item in items.items():
        line = lines[key]
        prediction, confidence = line.get("prediction"), line.get("confidence")
        if (not isinstance(prediction, str) or isinstance(confidence, bool)
                or not isinstance(confidence, int | float) or not math.isfinite(confidence)):
            raise BackboneSwapError(
                f"{path}: the answer to item {key!r} lacks a text prediction or a finite confidence",
                "Delete that line (eval answers the item again) or the file",
            )
        new = kind.rescore(task, item, line)
        moved += new["correct"] != line.get("correct") or new["score"] != line.get("score", new["score"])
        rescored[key] = new
    return rescored, moved


def _one_per_group(items: dict[str, dict[str, Any]], *sides: dict[str, dict[str, Any]]):
    """CircularEval: items that share a ``group`` are one question asked several ways (MMBench's rotations of its
    options), so they become one item, right only if every one of them is right, scored as its worst, its confidence
    the mean of theirs. The paired statistics then count questions, not askings; a task without groups is as it was.

    Returns the items and each side's lines, keyed by group (or by id for items in no group)."""
    groups: dict[str, list[str]] = {}
    for key, item in items.items():
        groups.setdefault(str(item.get("group", key)), []).append(key)
    if all(len(members) == 1 and members[0] == group for group, members in groups.items()):
        return (items, *sides)
    merged_items = {group: items[members[0]] | {"id": group} for group, members in groups.items()}
    merged = tuple({group: {"id": group, "members": members,
                            "correct": all(bool(lines[m]["correct"]) for m in members),
                            "score": min(float(lines[m]["score"]) for m in members),
                            "confidence": float(np.mean([float(lines[m]["confidence"]) for m in members]))}
                    for group, members in groups.items()} for lines in sides)
    return (merged_items, *merged)


def _image_key(item: dict[str, Any]) -> str:
    """Which image an item asks about: questions on one image are one cluster of the bootstrap."""
    if item.get("image"):
        return str(item["image"])
    if item.get("image_data"):  # an image shipped inside the benchmark file (MMBench's base64)
        return hashlib.sha256(str(item["image_data"]).encode()).hexdigest()
    return str(item["id"])


# example questions per kind of outcome shown under each task of the report, and the longest text shown of each
EXAMPLES_PER_KIND = 2
_EXAMPLE_CHARS = 200


def examples(kind: TaskType, ids: list[str], a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], *,
             questions: dict[str, Any] | None, seed: int) -> list[dict[str, Any]]:
    """A few questions only A solves, only B solves, and neither, drawn from ``seed``: what the numbers are made
    of, for a reader to judge (an answer marked wrong that reads right says more about the scoring than a score)."""
    import random

    groups: dict[str, list[str]] = {"A": [], "B": [], "neither": []}
    for i in ids:
        solved_a, solved_b = kind.solved(a[i]), kind.solved(b[i])
        who = "A" if solved_a and not solved_b else "B" if solved_b and not solved_a else None
        groups.setdefault(who or ("neither" if not solved_a else "both"), []).append(i)
    rng, chosen = random.Random(seed), []

    def text(value: Any) -> str | None:
        if value is None:
            return None
        shown = reference_text({"answer": value}) if isinstance(value, list) else str(value)
        return shown if len(shown) <= _EXAMPLE_CHARS else shown[: _EXAMPLE_CHARS - 1] + "\u2026"

    for who in ("A", "B", "neither"):
        for i in sorted(rng.sample(groups[who], min(EXAMPLES_PER_KIND, len(groups[who])))):
            chosen.append({"id": i, "solved_by": who, "question": text((questions or {}).get(i)),
                           "a": text(a[i].get("prediction")), "b": text(b[i].get("prediction")),
                           "reference": text(a[i].get("reference"))})
    return chosen


def paired_statistics(kind: TaskType, ids: list[str], a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], *,
                      n_resamples: int, seed: int, clusters: np.ndarray | None = None,
                      confidences: bool = True) -> dict[str, Any]:
    """The numbers every comparison shows for one task, from the two sides' answer lines (dicts by item id, both
    holding every id of ``ids``), whatever wrote them: our evaluation, lmms-eval's logs, LLaVA's answer files.

    Accuracy, its difference and calibration use each answer's credit (``kind.credit``): a short answer's VQA
    accuracy gives partial credit (2 of 10 annotators: 0.6), as published VQAv2 numbers do. Which questions each
    model solves needs a yes or no (``kind.solved``, one rule for partial credit): the overlap, McNemar, phi, kappa,
    Jaccard, the oracle and complementarity all count solved questions, so they describe the same questions.
    ``clusters`` (an image per item) makes the bootstrap resample images; without ``confidences`` (logs of other
    tools) the calibration numbers are None.
    """
    correct_a, correct_b = (np.array([kind.solved(lines[i]) for i in ids], dtype=bool) for lines in (a, b))
    score_a, score_b = (np.array([kind.credit(lines[i]) for i in ids]) for lines in (a, b))
    table = stats.paired_table(correct_a, correct_b)
    several_per_image = clusters is not None and len(set(clusters.tolist())) < len(ids)
    diff = stats.paired_bootstrap_diff(score_a, score_b, n_resamples=n_resamples, seed=seed,
                                       clusters=clusters if several_per_image else None)
    calibration: dict[str, Any] = {}
    for side, lines, credit in (("a", a, score_a), ("b", b, score_b)):
        if not confidences:
            calibration.update({f"ece_{side}": None, f"ece_{side}_ci": None, f"brier_{side}": None,
                                f"reliability_{side}": []})
            continue
        conf = np.clip(np.array([float(lines[i]["confidence"]) for i in ids]), 0.0, 1.0)
        result = stats.ece(conf, credit)
        interval = stats.ece_interval(conf, credit, n_resamples=min(n_resamples, 2000), seed=seed)
        calibration.update({f"ece_{side}": result.ece, f"ece_{side}_ci": [interval.low, interval.high],
                            f"brier_{side}": stats.brier(conf, credit), f"reliability_{side}": result.bins})
    structured = {f"{key}_{side}": value for side, lines in (("a", a), ("b", b))
                  for key, value in kind.summary([lines[i] for i in ids]).items()}
    return {
        "n": table.n, "accuracy_a": float(np.mean(score_a)), "accuracy_b": float(np.mean(score_b)),
        "diff": diff.estimate, "diff_ci": [diff.low, diff.high], "diff_ci_method": diff.method,
        "mcnemar_p": stats.mcnemar_exact(table),
        "overlap": {"both": table.both, "only_a": table.only_a, "only_b": table.only_b, "neither": table.neither},
        "phi": stats.phi(table), "kappa": stats.cohen_kappa(table), "oracle": stats.oracle_accuracy(table),
        "jaccard": stats.jaccard(table), "complementarity": stats.complementarity(table),
        **calibration,
        **structured,
    }


def official_metrics(task: Task, items: list[dict[str, Any]], lines_a: list[dict[str, Any]],
                     lines_b: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"official": {metric: {"a", "b"}}}``: a benchmark task's own metrics, as its evaluation code computes them
    (empty for tasks of other data). The lines are aligned with ``items``."""
    if task.benchmark is None:
        return {}
    benchmark = BENCHMARKS[task.benchmark]
    found = {"a": benchmark.official(items, lines_a), "b": benchmark.official(items, lines_b)}
    return {"official": {metric: {"a": found["a"].get(metric), "b": found["b"].get(metric)}
                         for metric in {**found["a"], **found["b"]}}}


def task_items(task: Task, on_bad_sample: str = "fail") -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The task's items as the suite holds them now, by id, and the image each asks about (bootstrap clusters)."""
    items = {str(item["id"]): item for item in read_items(task, on_bad_sample)}
    return items, {i: _image_key(item) for i, item in items.items()}


def task_statistics(task: Task, eval_a: Path, eval_b: Path, *, n_resamples: int, seed: int,
                    on_bad_sample: str = "fail") -> dict[str, Any]:
    """Every number the report shows for one task, from the two per-item files."""
    kind = TYPES[task.type]
    a, b = _lines(eval_a / f"{task.name}.jsonl"), _lines(eval_b / f"{task.name}.jsonl")
    # The task's items as the suite holds them now: answers to items since removed from its data (left in a
    # reused evaluation folder) are no part of the comparison.
    items, images = task_items(task, on_bad_sample)
    for side, lines in (("A", a), ("B", b)):
        missing = sorted(set(images) - set(lines))
        if missing:
            raise BackboneSwapError(
                f"task {task.name}: the two evaluations cover different items; {side} has no answer for "
                f"{len(missing)} of the task's {len(images)} items (e.g. {', '.join(missing[:3])})",
                "Evaluate both models on the same suite data (eval resumes and answers the missing items)",
            )
    ids = sorted(images)
    rescored = {}
    (a, rescored["a"]), (b, rescored["b"]) = (_rescore(lines, items, task, folder / f"{task.name}.jsonl")
                                              for lines, folder in ((a, eval_a), (b, eval_b)))
    items, a, b = _one_per_group(items, a, b)  # CircularEval: one question per group of rotations
    ids, images = sorted(items), {i: _image_key(item) for i, item in items.items()}
    numbers = paired_statistics(kind, ids, a, b, n_resamples=n_resamples, seed=seed,
                                clusters=np.array([images[i] for i in ids]))
    listed = [items[i] for i in ids]
    return {
        "name": task.name, "type": task.type, "needs": task.needs, "solved_when": kind.solved_when(task),
        **numbers,
        "examples": examples(kind, ids, a, b, questions={i: items[i].get("question") for i in ids}, seed=seed),
        "files": {"a": resolved(eval_a / f"{task.name}.jsonl"), "b": resolved(eval_b / f"{task.name}.jsonl")},
        "cka_a": _stability(eval_a, task), "cka_b": _stability(eval_b, task),
        **official_metrics(task, listed, [a[i] for i in ids], [b[i] for i in ids]),
        "rescored": rescored,
    }


def _manifest(folder: Path, step: str) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return data if data.get("step") == step else {}


def same_weights(model_a: Path, model_b: Path) -> bool:
    """Whether two model folders hold the same weights, byte for byte (a model compared with a copy of itself, or
    a path given twice). The files are hashed only when their tensors' names and shapes already agree."""
    from backbone_swap.checkpoints.folder import open_checkpoint

    a, b = open_checkpoint(model_a).weights, open_checkpoint(model_b).weights
    if sorted((n, a.shape(n), a.dtype(n)) for n in a.names()) != sorted((n, b.shape(n), b.dtype(n)) for n in b.names()):
        return False
    if sorted(f.stat().st_size for f in a.files) != sorted(f.stat().st_size for f in b.files):
        return False
    return sorted(open_checkpoint(model_a).sha256().values()) == sorted(open_checkpoint(model_b).sha256().values())


def lineage(model_dir: Path) -> dict[str, Any]:
    """What backbone-swap recorded about how ``model_dir`` was made: its recipe, data and LLM."""
    model_dir = Path(model_dir)
    found: dict[str, Any] = {}
    train = next((m for m in (_manifest(f, "train") for f in [model_dir, *list(model_dir.parents)[:3]]) if m), {})
    if train:
        found.update(recipe_hash=train.get("recipe_hash"), data=train.get("inputs", {}).get("data_sha256"),
                     max_length=train.get("recipe", {}).get("max_length"),
                     weight_decay={name: stage.get("weight_decay")
                                   for name, stage in (train.get("recipe", {}).get("stages") or {}).items()
                                   if isinstance(stage, dict)})
        model_dir = Path(train.get("inputs", {}).get("model", model_dir))
    transplant = _manifest(model_dir, "transplant")
    if transplant:
        found.update(llm_kind=transplant.get("llm", {}).get("kind"))
        inputs = transplant.get("inputs", {})
        found.update(vlm=(inputs.get("vlm") or {}).get("path"), llm=(inputs.get("llm") or {}).get("path"))
    found["trained"] = bool(train)
    return found


def training_loss(model_dir: Path) -> list[dict[str, Any]] | None:
    """The loss per optimizer step of the training run that made ``model_dir`` here (None: not trained here)."""
    model_dir = Path(model_dir)
    # the export's own manifest names the run without its history; the run folder's (two levels up) holds it
    history = next((m["history"] for m in (_manifest(f, "train") for f in [model_dir, *list(model_dir.parents)[:3]])
                    if m.get("history")), None)
    return [{"stage": h["stage"], "step": h["step"], "loss": h["loss"]} for h in history] if history else None


def model_name(model_dir: Path) -> str:
    """What a model is, for a report's title: the LLM and the VLM it was built from when backbone-swap made it
    ("Llama-3-8B on llava-1.5-7b's vision side, trained here"), else its folder's name; the paths stay in the
    report's settings."""
    made = lineage(model_dir)
    if made.get("llm") and made.get("vlm"):
        how = "trained here" if made["trained"] else "untrained transplant"
        return f"{Path(made['llm']).name} on {Path(made['vlm']).name}'s vision side, {how}"
    return Path(model_dir).resolve().name


def _decay(lineage_: dict[str, Any]) -> str:
    """Weight decay per stage, as ``stage1 0, stage2 0.1``."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
                     for k, v in (lineage_.get("weight_decay") or {}).items()) or "unknown"


def confounds(model_a: Path, model_b: Path, eval_dirs: tuple[Path, Path] | None = None) -> list[str]:
    """Differences besides the backbone that would make a difference not the backbone's alone."""
    warnings = []
    if eval_dirs is not None:
        dtypes = []
        for folder in eval_dirs:
            try:
                dtypes.append(json.loads((Path(folder) / "manifest.json").read_text()).get("dtype"))
            except (OSError, json.JSONDecodeError):
                dtypes.append(None)
        if dtypes[0] and dtypes[1] and dtypes[0] != dtypes[1]:
            warnings.append(f"A was evaluated in {dtypes[0]} and B in {dtypes[1]} (each checkpoint's own dtype), so "
                            "their vision towers compute differently too; pass --dtype to evaluate both in one dtype")
    configs = []
    for model in (model_a, model_b):
        try:
            configs.append(json.loads((Path(model) / "config.json").read_text()).get("text_config", {}))
        except (OSError, json.JSONDecodeError):
            configs.append({})
    lengths = [c.get("max_position_embeddings") for c in configs]
    if lengths[0] and lengths[1] and lengths[0] != lengths[1]:
        warnings.append(f"the LLMs' context lengths differ ({lengths[0]} vs {lengths[1]} positions)")
    a, b = lineage(model_a), lineage(model_b)
    if a.get("recipe_hash") and b.get("recipe_hash") and a["recipe_hash"] != b["recipe_hash"]:
        warnings.append(f"A and B were trained with different recipes ({a['recipe_hash'][:12]} vs "
                        f"{b['recipe_hash'][:12]})")
        if a.get("max_length") != b.get("max_length"):
            warnings.append(f"A and B were trained with different max lengths ({a.get('max_length')} vs "
                            f"{b.get('max_length')})")
        if a.get("weight_decay") != b.get("weight_decay"):
            warnings.append(f"A and B were trained with different weight decay ({_decay(a)} vs {_decay(b)})")
    elif bool(a.get("recipe_hash")) != bool(b.get("recipe_hash")):
        untrained = "A" if not a.get("recipe_hash") else "B"
        warnings.append(f"{untrained} was not trained here with a recorded recipe, so training differences may "
                        "explain part of the gap (use --baseline retrain for a controlled comparison)")
    if a.get("data") and b.get("data") and a["data"] != b["data"]:
        warnings.append("A and B were trained on different data")
    kinds = {a.get("llm_kind"), b.get("llm_kind")} - {None, "unknown"}
    if len(kinds) == 2:
        warnings.append(f"one LLM is a base model and the other instruction-tuned (A {a['llm_kind']}, "
                        f"B {b['llm_kind']})")
    return warnings


def conclude(tasks: list[dict[str, Any]], meta: dict[str, Any], warnings: list[str], *, alpha: float,
             min_gain: float, weights: dict[str, float] | None, n_resamples: int, seed: int,
             expected: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The comparison's verdicts (per task, in ``tasks`` in place, and overall) around the task statistics, as
    ``report.write_report`` takes it: the same for every kind of input (model folders, logs, answer files)."""
    from backbone_swap.verdict.decision import (
        Thresholds,
        both_poor,
        capabilities,
        check_expectation,
        overall_verdict,
        task_verdict,
    )

    thresholds = Thresholds(alpha=alpha, min_gain=min_gain)
    for record in tasks:
        record["verdict"], record["reasons"] = task_verdict(record, thresholds)
        record["both_poor"] = both_poor(record, thresholds)
    expected = expected or {}
    return {
        "meta": {**meta, "alpha": alpha, "min_gain": min_gain, "n_resamples": n_resamples, "seed": seed,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": None},
        "tasks": tasks,
        "overall": overall_verdict(tasks, weights),
        "capabilities": capabilities(tasks),
        "warnings": warnings,
        "expectations": [check_expectation(record, expected[record["name"]], thresholds)
                         for record in tasks if expected.get(record["name"])],
    }


def compare(
    model_a: str | Path,
    model_b: str | Path,
    suite: Suite,
    output: str | Path,
    *,
    min_gain: float = 0.02,
    alpha: float = 0.05,
    weights: dict[str, float] | None = None,
    n_resamples: int = 10000,
    seed: int = 0,
    batch_size: int = 16,
    baseline: str = "as-is",
    eval_dirs: tuple[Path, Path] | None = None,
    extra_warnings: list[str] | None = None,
    dtype: str | None = None,
    show_progress: bool = True,
    on_bad_sample: str = "fail",
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate (or reuse) A and B on ``suite``, compare task by task, and write the report to ``output``.

    Under a multi-process launch every process evaluates its share, and the main one compares and writes; the
    others return an empty dict."""
    from backbone_swap.evaluate.runner import evaluate
    from backbone_swap.training.schemes import launch_state
    from backbone_swap.verdict.report import write_report

    started = time.time()
    model_a, model_b, output = Path(model_a), Path(model_b), Path(output)
    eval_a, eval_b = eval_dirs or (output / "eval" / "a", output / "eval" / "b")
    folder = RunFolder(output, COMPARISON)
    folder.previous()  # the report's files and plots would overwrite files of the same names
    if weights:
        unknown = sorted(set(weights) - {t.name for t in suite.tasks})
        if unknown:
            raise BackboneSwapError(f"--weights names task {unknown[0]!r}, which suite {suite.name} does not have",
                                    f"Its tasks: {suite.names()}")
    identical = []
    if same_weights(model_a, model_b):  # said before hours of evaluation, and in the report
        identical = [f"A and B hold the same weights (identical weight files): {model_a} and {model_b} are one model, "
                     "so every difference below is noise"]
        if show_progress:
            from backbone_swap.progress import console

            console.print(f"warning: {identical[0]}", highlight=False, markup=False)
    state = launch_state()
    with folder.hold(state):
        for model, evaluations in ((model_a, eval_a), (model_b, eval_b)):
            evaluate(model, suite, evaluations, batch_size=batch_size, seed=seed, dtype=dtype,
                     show_progress=show_progress, on_bad_sample=on_bad_sample, device=device)
        if not state.is_main_process:  # under a multi-process launch the main process writes the report
            return {}
        tasks = [task_statistics(task, eval_a, eval_b, n_resamples=n_resamples, seed=seed,
                                 on_bad_sample=on_bad_sample) for task in suite.tasks]
        meta = {"model_a": resolved(model_a), "model_b": resolved(model_b), "name_a": model_name(model_a),
                "name_b": model_name(model_b), "suite": suite.name, "baseline": baseline,
                "source": "models"}
        warnings = identical + confounds(model_a, model_b, (eval_a, eval_b)) + list(extra_warnings or []) + [
            f"task {t['name']}: {n} of {side.upper()}'s {t['n']} answers score differently now than when they "
            "were evaluated (the task's references or scoring rules changed); the report uses the current scores"
            for t in tasks for side, n in t["rescored"].items() if n]
        comparison = conclude(tasks, meta, warnings, alpha=alpha, min_gain=min_gain, weights=weights,
                              n_resamples=n_resamples, seed=seed, expected={t.name: t.expect for t in suite.tasks})
        losses = {side: curve for side, curve in (("a", training_loss(model_a)), ("b", training_loss(model_b)))
                  if curve}
        if losses:
            comparison["training_loss"] = losses
        comparison["meta"]["seconds"] = round(time.time() - started, 3)
        write_report(output, comparison)
    return comparison


# --------------------------------------------------------------------------------------------------
# Other tools' outputs: lmms-eval's logs, LLaVA's answer files
# --------------------------------------------------------------------------------------------------

NO_CONFIDENCES = {"calibration": "the logs hold no confidences", "stability": "the logs hold no hidden states"}


def _check_weights(weights: dict[str, float] | None, names: list[str], where: str) -> None:
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise BackboneSwapError(f"--weights names task {unknown[0]!r}, which {where} does not have",
                                f"Its tasks: {', '.join(names)}")


def _write_other(output: Path, inputs: tuple[Path, Path], label: str,
                 build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Hold ``output`` (refused if it holds other files or overlaps an input), build the comparison, write it."""
    from backbone_swap.verdict.report import write_report

    started = time.time()
    folder = RunFolder(output, COMPARISON, inputs=[(label, path) for path in inputs])
    folder.previous()  # the report's files and plots would overwrite files of the same names
    with folder.hold():
        comparison = build()
        comparison["meta"]["seconds"] = round(time.time() - started, 3)
        write_report(output, comparison)
    return comparison


def compare_logs(logs_a: str | Path, logs_b: str | Path, output: str | Path, *,
                 metrics: dict[str, str] | None = None, min_gain: float = 0.02, alpha: float = 0.05,
                 weights: dict[str, float] | None = None, n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Compare two lmms-eval runs from their ``--log_samples`` folders: every task both logged, paired by
    ``doc_id``, correct by the task's own per-sample score (``harness_logs``), the report as ``compare`` writes it.

    ``metrics`` names the per-sample score of tasks where the choice is not automatic (``{"mme": "..."}``). The
    logs hold no confidences and no hidden states, so calibration and stability are null, with the reason.
    """
    from backbone_swap.verdict import harness_logs as hl

    logs_a, logs_b, output = Path(logs_a).expanduser(), Path(logs_b).expanduser(), Path(output)
    found_a, found_b = hl.find_logs(logs_a, "A"), hl.find_logs(logs_b, "B")

    def build() -> dict[str, Any]:
        paired, warnings = hl.pair_logs(found_a, found_b, metrics or {})
        _check_weights(weights, [task.name for task in paired], "the logs' common tasks")
        kind = TYPES["short_answer"]  # a generated answer, credited by a score in [0, 1]
        tasks = []
        for task in paired:
            ids = sorted(task.lines["a"], key=lambda doc: (len(doc), doc))  # doc_ids are numbers: 2 before 10
            numbers = paired_statistics(kind, ids, task.lines["a"], task.lines["b"], n_resamples=n_resamples,
                                        seed=seed, confidences=False)
            tasks.append({"name": task.name, "type": kind.name, "needs": hl.needs_of(task.name),
                          "solved_when": full_credit_rule(f"lmms-eval's per-sample {task.metric}"), **numbers,
                          "examples": examples(kind, ids, task.lines["a"], task.lines["b"], questions=None, seed=seed),
                          "cka_a": None, "cka_b": None, "unavailable": dict(NO_CONFIDENCES),
                          "metric": task.metric, "scored_by": "lmms-eval",
                          "files": {side: resolved(path) for side, path in task.files.items()},
                          **({"official": task.official} if task.official else {})})
        meta = {"model_a": resolved(found_a.folder), "model_b": resolved(found_b.folder), "suite": "lmms-eval logs",
                "baseline": "as-is", "source": "lmms-eval"}
        return conclude(tasks, meta, warnings, alpha=alpha, min_gain=min_gain, weights=weights,
                        n_resamples=n_resamples, seed=seed)

    return _write_other(output, (logs_a, logs_b), "log folder", build)


def compare_answers(answers_a: str | Path, answers_b: str | Path, suite: Suite, output: str | Path, *,
                    task_name: str | None = None, min_gain: float = 0.02, alpha: float = 0.05,
                    weights: dict[str, float] | None = None, n_resamples: int = 10000, seed: int = 0,
                    on_bad_sample: str = "fail") -> dict[str, Any]:
    """Compare two answer files of LLaVA's evaluation scripts on one task of ``suite``: the answers are paired
    with the task's items by ``question_id`` and scored by the task's type, as our own evaluation's answers are
    (a multiple-choice answer may be the option's letter). No confidences: calibration and stability are null.
    """
    from backbone_swap.verdict import harness_logs as hl

    answers_a, answers_b, output = Path(answers_a).expanduser(), Path(answers_b).expanduser(), Path(output)
    if task_name is None and len(suite.tasks) > 1:
        raise BackboneSwapError(f"LLaVA's answer files answer one task, and suite {suite.name} has "
                                f"{len(suite.tasks)}", f"Name it with --task, one of {suite.names()}")
    task = suite.task(task_name) if task_name is not None else suite.tasks[0]
    kind = TYPES[task.type]

    def build() -> dict[str, Any]:
        _check_weights(weights, [task.name], f"the comparison of task {task.name}")
        items, images = task_items(task, on_bad_sample)
        ids = sorted(items)
        lines = {}
        for side, path in (("a", answers_a), ("b", answers_b)):
            answers = hl.read_llava_answers(path)
            missing = [i for i in ids if i not in answers]
            if missing:
                raise BackboneSwapError(
                    f"{path} has no answer for {len(missing)} of task {task.name}'s {len(ids)} items (e.g. "
                    f"question_id {', '.join(missing[:3])})",
                    "Answer the same questions with both models; their question_id must be the items' ids")
            chosen = {i: hl.option_answer(items[i], answers[i]) if kind.answered_by == "options" else answers[i]
                      for i in ids}
            lines[side] = {i: {**kind.score(task, items[i], chosen[i], None), "raw": answers[i]} for i in ids}
        numbers = paired_statistics(kind, ids, lines["a"], lines["b"], n_resamples=n_resamples, seed=seed,
                                    clusters=np.array([images[i] for i in ids]), confidences=False)
        listed = [items[i] for i in ids]
        record = {"name": task.name, "type": task.type, "needs": task.needs, "solved_when": kind.solved_when(task),
                  **numbers, "cka_a": None, "cka_b": None,
                  "examples": examples(kind, ids, lines["a"], lines["b"],
                                       questions={i: items[i].get("question") for i in ids}, seed=seed),
                  "unavailable": {"calibration": "the answer files hold no confidences",
                                  "stability": "the answer files hold no hidden states"},
                  **official_metrics(task, listed, [lines["a"][i] for i in ids], [lines["b"][i] for i in ids])}
        meta = {"model_a": resolved(answers_a), "model_b": resolved(answers_b), "suite": suite.name,
                "baseline": "as-is", "source": "llava-answers"}
        return conclude([record], meta, [], alpha=alpha, min_gain=min_gain, weights=weights,
                        n_resamples=n_resamples, seed=seed, expected={task.name: task.expect})

    return _write_other(output, (answers_a, answers_b), "answer file", build)
