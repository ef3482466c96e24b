"""The decision rule: from per-task paired statistics to a verdict with its reasons.

A backbone swap rarely helps everywhere. The newer LLM may solve *different* questions rather than *more*,
may be better calibrated or more stable without being more accurate, and may be the only one able to
produce some output formats at all. So the verdict is made task by task, in this order:

1. **A capability only one model has.** The rate that matters is the share of outputs that parse in the
   declared format for structured tasks, else accuracy. If one model is at or below ``near_zero`` and the
   other reaches ``capable``, the task goes to the model that can do it, whatever the test says.
2. **A significant difference.** Both the exact McNemar test (p < ``alpha``) and the paired bootstrap
   interval of the accuracy difference (excluding 0) must agree. A significant difference smaller than
   ``min_gain`` is not worth a swap: "no clear difference".
3. **Otherwise**, if the two models solve clearly different questions (an oracle router would gain at least
   ``complementary_gain`` over the better model, and the solved sets overlap by less than
   ``complementary_jaccard``), the verdict is "complementary": neither replaces the other on that task.
   Else "no clear difference".

Calibration (ECE, Brier) and stability (CKA) are reported as reasons: they are evidence for the reader, and
do not change the verdict; where the inputs cannot give them (logs of other tools hold no confidences and no
hidden states), the task's ``unavailable`` says why and the reasons say so. Everything here is pure: dicts in,
dicts and strings out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.verdict.formatting import as_interval, fmt_num, fmt_p_clause, fmt_pct, fmt_points, is_number

VERDICTS = ("upgrade", "keep", "no clear difference", "complementary")
OVERALL_VERDICTS = ("upgrade", "keep", "mixed: route per task", "no clear difference")
# What a suite may declare it expects of a task: a verdict, or that only one model can do it at all.
EXPECTATIONS = (*VERDICTS, "only A", "only B")
_SCORE = {"upgrade": 1.0, "keep": -1.0}
# Rates and differences are ratios of counts; a threshold hit exactly (0.02 = 4/200) must count as hit
# even when the float division lands a rounding step below it.
_EPS = 1e-9


@dataclass(frozen=True)
class Thresholds:
    """The knobs of the decision rule (all rates and gains are absolute fractions, not percent)."""

    alpha: float = 0.05  # significance level of the McNemar test (the bootstrap interval is 95%)
    min_gain: float = 0.02  # smallest accuracy difference worth a swap
    near_zero: float = 0.05  # a rate at or below this means "cannot do it"
    capable: float = 0.2  # ... provided the other model reaches at least this
    complementary_gain: float = 0.05  # oracle-router accuracy minus the better single model, at least
    complementary_jaccard: float = 0.6  # overlap of the two solved sets, below
    poor: float = 0.5  # a task where more than this share of questions is solved by neither model: both are poor

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BackboneSwapError(f"threshold {f.name} must be a finite number, got {value!r}")
            low_open = f.name in ("alpha", "capable")
            if value < 0.0 or value > 1.0 or (low_open and value == 0.0) or (f.name == "alpha" and value == 1.0):
                interval = "(0, 1)" if f.name == "alpha" else "(0, 1]" if low_open else "[0, 1]"
                raise BackboneSwapError(
                    f"threshold {f.name} must lie in {interval}, got {value}",
                    "Rates and gains are fractions: 0.02 means 2 points",
                )
        if self.near_zero >= self.capable:
            raise BackboneSwapError(
                f"threshold near_zero ({self.near_zero}) must be below capable ({self.capable})",
                "A model cannot both fail and succeed at a task",
            )


# --------------------------------------------------------------------------------------------------
# One task
# --------------------------------------------------------------------------------------------------


_REQUIRED = ("name", "n", "accuracy_a", "accuracy_b", "diff", "diff_ci", "mcnemar_p", "overlap")


def _check_task(task: Mapping[str, Any]) -> None:
    missing = [key for key in _REQUIRED if key not in task]
    if missing:
        name = task.get("name", "?")
        raise ValueError(f"task statistics for {name!r} lack {', '.join(missing)}; compare.py must provide them")


def _rate(task: Mapping[str, Any], side: str) -> float | None:
    if task.get("type") == "structured" and task.get(f"valid_rate_{side}") is not None:
        value = task.get(f"valid_rate_{side}")
    else:
        value = task.get(f"accuracy_{side}")
    return float(value) if is_number(value) else None


def capability_of(task: Mapping[str, Any], t: Thresholds | None = None) -> dict[str, Any] | None:
    """The capability entry for ``task`` if exactly one model can do it, else None.

    The rate compared is the valid-output rate for structured tasks (when known), else accuracy: a model
    that never produces a parsable coordinate cannot do the task, whatever its accuracy on the rest.
    """
    t = t or Thresholds()
    structured = task.get("type") == "structured" and task.get("valid_rate_a") is not None \
        and task.get("valid_rate_b") is not None
    rate_a, rate_b = _rate(task, "a"), _rate(task, "b")
    if rate_a is None or rate_b is None:
        return None
    who = None
    if rate_a <= t.near_zero + _EPS and rate_b >= t.capable - _EPS:
        who = "B"
    elif rate_b <= t.near_zero + _EPS and rate_a >= t.capable - _EPS:
        who = "A"
    if who is None:
        return None
    return {
        "name": str(task["name"]),
        "who": who,
        "measure": "valid outputs" if structured else "accuracy",
        "rate_a": rate_a,
        "rate_b": rate_b,
        "type": task.get("type"),
        "needs": task.get("needs"),
    }


def capabilities(tasks: Iterable[Mapping[str, Any]], t: Thresholds | None = None) -> list[dict[str, Any]]:
    """Tasks that one model can do and the other cannot (see ``capability_of``), in input order.

    Each entry: ``name``, ``who`` ("A" or "B": the model that can), ``measure`` ("valid outputs" or
    "accuracy"), ``rate_a``, ``rate_b``, and the task's ``type`` and ``needs``.
    """
    found = (capability_of(task, t) for task in tasks)
    return [entry for entry in found if entry is not None]


def check_expectation(task: Mapping[str, Any], expected: str, t: Thresholds | None = None) -> dict[str, Any]:
    """Whether the run shows the finding a suite expects of ``task`` (a task record with its verdict).

    A run that does not show it says so rather than being left out: a benchmark built to show a finding
    (the demo's) is only honest if its report can also say the finding did not appear.
    """
    if expected not in EXPECTATIONS:
        raise ValueError(f"unknown expectation {expected!r}; expected one of {', '.join(EXPECTATIONS)}")
    if expected in VERDICTS:
        observed = str(task.get("verdict"))
        shown = observed == expected
    else:
        entry = capability_of(task, t)
        who = entry["who"] if entry else None
        shown = who == expected[-1]
        measure = "valid outputs" if task.get("type") == "structured" and task.get("valid_rate_a") is not None \
            else "accuracy"
        rates = f"{measure} A {fmt_pct(_rate(task, 'a'))}, B {fmt_pct(_rate(task, 'b'))}"
        observed = f"only {who} ({rates})" if who else f"neither alone ({rates})"
    return {"task": str(task["name"]), "expected": expected, "observed": observed, "shown": shown}


def count_shown(expectations: Iterable[Mapping[str, Any]]) -> int:
    """How many of ``check_expectation``'s results the run showed."""
    return sum(bool(entry["shown"]) for entry in expectations)


def _diff_sentence(task: Mapping[str, Any]) -> str:
    diff, ci = task["diff"], as_interval(task["diff_ci"])
    acc = f"{fmt_pct(task['accuracy_b'])} vs {fmt_pct(task['accuracy_a'])}"
    ci_text = f"95% CI {fmt_points(ci[0], sign=False)} to {fmt_points(ci[1], sign=False)}" if ci else "95% CI n/a"
    p_text = f"McNemar {fmt_p_clause(task['mcnemar_p'])}"
    if not is_number(diff):
        return f"The accuracy difference is undefined ({acc}), {p_text}."
    if float(diff) > 0:
        lead = f"B answers {fmt_points(diff, sign=False)} points more questions correctly"
    elif float(diff) < 0:
        lead = f"B answers {fmt_points(-float(diff), sign=False)} points fewer questions correctly"
    else:
        lead = "A and B answer the same share of questions correctly"
    return f"{lead} ({acc}; {ci_text}), {p_text}."


def _overlap_counts(task: Mapping[str, Any]) -> tuple[int | None, int | None]:
    overlap = task.get("overlap") or {}
    return overlap.get("only_a"), overlap.get("only_b")


def _best(task: Mapping[str, Any]) -> float | None:
    a, b = task.get("accuracy_a"), task.get("accuracy_b")
    if is_number(a) and is_number(b):
        return max(float(a), float(b))
    return None


def _overlap_sentence(task: Mapping[str, Any]) -> str | None:
    only_a, only_b = _overlap_counts(task)
    if only_a is None or only_b is None:
        return None
    parts = [f"Only A solves {only_a} questions, only B {only_b}"]
    if is_number(task.get("jaccard")):
        parts.append(f"the solved sets overlap by {fmt_num(task['jaccard'], 2)} (Jaccard)")
    if is_number(task.get("complementarity")):
        parts.append(f"routing each question to the right model would add {fmt_points(task['complementarity'])} "
                     "points of questions solved over the better model")
    if "kappa" in task:  # undefined (null) when both models are right on every question, or both wrong on every one
        kappa = task["kappa"]
        parts.append(f"agreement beyond chance (Cohen's kappa) {fmt_num(kappa, 2)}" if is_number(kappa) else
                     "agreement beyond chance (Cohen's kappa) n/a: both models give the same result on every question")
    return "; ".join(parts) + "."


def _unavailable(task: Mapping[str, Any], what: str) -> str | None:
    """'Calibration: not available: the logs hold no confidences.' where the inputs cannot give ``what``."""
    reason = (task.get("unavailable") or {}).get(what)
    return f"{what.capitalize()}: not available: {reason}." if reason else None


# A difference in ECE or CKA that shows only in the third decimal names no winner.
_NOISE = 0.01


def _calibration_sentence(task: Mapping[str, Any]) -> str | None:
    """Which model is better calibrated, said only where the evidence does: the ECE gap outside both models'
    intervals (and above the third decimal), and ECE and Brier agreeing on the same model."""
    ece_a, ece_b = task.get("ece_a"), task.get("ece_b")
    if not (is_number(ece_a) and is_number(ece_b)):
        return _unavailable(task, "calibration")
    ece_a, ece_b = float(ece_a), float(ece_b)
    brier = (float(task["brier_a"]), float(task["brier_b"])) \
        if is_number(task.get("brier_a")) and is_number(task.get("brier_b")) else None
    brier_text = f"; Brier A {fmt_num(brier[0])}, B {fmt_num(brier[1])}" if brier else ""
    if ece_a == ece_b:
        return f"A and B are equally calibrated (ECE {fmt_num(ece_a)} each){brier_text}."
    ci_a, ci_b = as_interval(task.get("ece_a_ci")), as_interval(task.get("ece_b_ci"))
    intervals = ""
    overlap = False
    if ci_a and ci_b:
        overlap = ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]
        intervals = (f" (95% intervals A {fmt_num(ci_a[0])}-{fmt_num(ci_a[1])}, B {fmt_num(ci_b[0])}-"
                     f"{fmt_num(ci_b[1])}: {'they overlap' if overlap else 'they do not overlap'})")
    if overlap or abs(ece_a - ece_b) < _NOISE:
        why = "the gap is within their intervals" if overlap else "the gap shows only in the third decimal"
        return (f"No clear difference in calibration: ECE A {fmt_num(ece_a)}, B {fmt_num(ece_b)}; {why}"
                f"{intervals}{brier_text}.")
    better, worse = ("B", "A") if ece_b < ece_a else ("A", "B")
    low, high = sorted((ece_a, ece_b))
    if brier and brier[0] != brier[1] and ("B" if brier[1] < brier[0] else "A") != better:
        return (f"ECE and Brier disagree on which model is better calibrated: ECE favours {better} "
                f"({fmt_num(low)} vs {fmt_num(high)} for {worse}){intervals}, Brier favours {worse} (A "
                f"{fmt_num(brier[0])}, B {fmt_num(brier[1])}).")
    return f"{better} is better calibrated: ECE {fmt_num(low)} vs {fmt_num(high)} for {worse}{intervals}{brier_text}."


def _stability_sentence(task: Mapping[str, Any]) -> str | None:
    cka_a, cka_b = task.get("cka_a"), task.get("cka_b")
    if is_number(cka_a) and is_number(cka_b):
        cka_a, cka_b = float(cka_a), float(cka_b)
        if cka_a == cka_b:
            return f"A and B are equally stable under perturbed inputs (CKA {fmt_num(cka_a)} each)."
        if abs(cka_a - cka_b) < _NOISE:
            return (f"No clear difference in stability under perturbed inputs: CKA A {fmt_num(cka_a)}, B "
                    f"{fmt_num(cka_b)}; the gap shows only in the third decimal.")
        better, worse = ("B", "A") if cka_b > cka_a else ("A", "B")
        high, low = max(cka_a, cka_b), min(cka_a, cka_b)
        return (f"{better}'s hidden states are more stable under perturbed inputs: CKA {fmt_num(high)} vs "
                f"{fmt_num(low)} for {worse} (higher is more stable).")
    if is_number(cka_a) or is_number(cka_b):
        side, value = ("A", cka_a) if is_number(cka_a) else ("B", cka_b)
        return f"Stability was measured for {side} only (CKA {fmt_num(value)})."
    return _unavailable(task, "stability")


def _format_sentences(task: Mapping[str, Any]) -> list[str]:
    out = []
    va, vb = task.get("valid_rate_a"), task.get("valid_rate_b")
    if va is not None or vb is not None:
        out.append(f"Outputs that parse in the declared format: A {fmt_pct(va)}, B {fmt_pct(vb)}.")
    ea, eb = task.get("mean_error_a"), task.get("mean_error_b")
    if is_number(ea) or is_number(eb):
        out.append(f"Mean error of the parsed outputs: A {fmt_num(ea)}, B {fmt_num(eb)} (lower is better).")
    return out


def both_poor(task: Mapping[str, Any], t: Thresholds | None = None) -> bool:
    """Whether most of the task's questions are solved by neither model: a verdict there compares two failures."""
    overlap, n = task.get("overlap") or {}, task.get("n") or 0
    return bool(n) and is_number(overlap.get("neither")) and overlap["neither"] / n > (t or Thresholds()).poor


def task_verdict(task: Mapping[str, Any], t: Thresholds | None = None) -> tuple[str, list[str]]:
    """The verdict on one task and the reasons for it, as plain sentences with the numbers.

    Returns (verdict, reasons) with verdict one of ``VERDICTS``; the first reason is the one that decided.
    Missing optional statistics (ECE, CKA, valid rates) simply leave their sentences out; NaN anywhere in
    the test statistics makes the difference "not significant".
    """
    t = t or Thresholds()
    _check_task(task)
    reasons: list[str] = []
    diff = float(task["diff"]) if is_number(task["diff"]) else math.nan
    ci = as_interval(task["diff_ci"])
    p = float(task["mcnemar_p"]) if is_number(task["mcnemar_p"]) else math.nan
    p_ok = p < t.alpha
    ci_ok = ci is not None and (ci[0] > 0.0 or ci[1] < 0.0)
    significant = p_ok and ci_ok
    overlap_said = False

    capability = capability_of(task, t)
    if capability is not None:
        verdict = "upgrade" if capability["who"] == "B" else "keep"
        rates = f"{capability['measure']} {fmt_pct(capability['rate_a'])} vs {fmt_pct(capability['rate_b'])}"
        reasons.append(f"Only {capability['who']} can do this task at all ({rates}, A vs B).")
        reasons.append(_diff_sentence(task))
    elif significant:
        reasons.append(_diff_sentence(task))
        gain = f"the minimum difference of {fmt_points(t.min_gain, sign=False)} points (--min-gain)"
        if diff >= t.min_gain - _EPS:
            verdict = "upgrade"
            reasons.append(f"The gain is significant (p < alpha = {t.alpha:g}, the interval excludes 0) "
                           f"and at least {gain}.")
        elif diff <= -t.min_gain + _EPS:
            verdict = "keep"
            reasons.append(f"The loss is significant (p < alpha = {t.alpha:g}, the interval excludes 0) "
                           f"and at least {gain}.")
        else:
            verdict = "no clear difference"
            reasons.append(f"The difference is significant but smaller than {gain}.")
    else:
        reasons.append(_diff_sentence(task))
        if p_ok:
            reasons.append(f"McNemar p is below alpha = {t.alpha:g} but the 95% interval of the difference "
                           "includes 0, so the difference is not counted as significant.")
        elif ci_ok:
            reasons.append(f"The 95% interval of the difference excludes 0 but McNemar p is not below alpha = "
                           f"{t.alpha:g}, so the difference is not counted as significant.")
        else:
            reasons.append(f"The difference is not significant (alpha = {t.alpha:g}).")
        gain, jac = task.get("complementarity"), task.get("jaccard")
        if (is_number(gain) and is_number(jac) and float(gain) >= t.complementary_gain - _EPS
                and float(jac) < t.complementary_jaccard):
            verdict = "complementary"
            only_a, only_b = _overlap_counts(task)
            # the oracle and complementarity count solved questions (partial credit binarised), so the better
            # model's share solved is oracle - complementarity, not its accuracy with partial credit
            oracle = task.get("oracle")
            best = float(oracle) - float(gain) if is_number(oracle) else _best(task)
            if not is_number(oracle) and best is not None:
                oracle = best + float(gain)
            reasons.append(
                f"They solve different questions rather than more: only A {only_a}, only B {only_b} (solved-set "
                f"overlap {fmt_num(jac, 2)}); picking the right model per question would solve {fmt_pct(oracle)} vs "
                f"{fmt_pct(best)} for the better one alone: neither replaces the other here (route per question, "
                "or keep both)."
            )
            overlap_said = True
        else:
            verdict = "no clear difference"

    if not overlap_said:
        sentence = _overlap_sentence(task)
        if sentence:
            reasons.append(sentence)
    if both_poor(task, t):
        overlap = task["overlap"]
        reasons.insert(1, f"Both models are poor here: {overlap['neither']} of {task['n']} questions "
                          f"({fmt_pct(overlap['neither'] / task['n'])}) are solved by neither, whatever the verdict "
                          "says about the difference between them.")
    reasons.extend(_format_sentences(task))
    for sentence in (_calibration_sentence(task), _stability_sentence(task)):
        if sentence:
            reasons.append(sentence)
    return verdict, reasons


# --------------------------------------------------------------------------------------------------
# All tasks together
# --------------------------------------------------------------------------------------------------


def _join(names: Sequence[str]) -> str:
    return ", ".join(names)


def _effective_weights(names: list[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict.fromkeys(names, 1.0)
    unknown = [name for name in weights if name not in names]
    if unknown:
        raise BackboneSwapError(
            f"--weights names task {unknown[0]!r}, which is not in the comparison",
            f"Known tasks: {_join(names)}",
        )
    out = {}
    for name in names:
        value = weights.get(name, 1.0)
        if isinstance(value, bool) or not is_number(value):
            raise BackboneSwapError(f"the weight of task {name!r} must be a finite number, got {value!r}")
        if float(value) < 0:
            raise BackboneSwapError(f"the weight of task {name!r} is negative ({value})",
                                    "Weights are importances: 0 ignores a task, 1 is the default")
        out[name] = float(value)
    if not any(out.values()):
        raise BackboneSwapError("every task has weight 0", "Give at least one task a positive weight")
    return out


def _needs_sentences(tasks: list[Mapping[str, Any]]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(str(task.get("needs") or "other"), []).append(task["verdict"])
    out = []
    for needs, verdicts in groups.items():
        total = len(verdicts)
        parts = [f"{verdict} on {verdicts.count(verdict)} of {total}" for verdict in VERDICTS if verdict in verdicts]
        out.append(f"{needs} tasks: {', '.join(parts)}.")
    return out


def overall_verdict(
    tasks_with_verdicts: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float] | None = None,
    *,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Combine the per-task verdicts into one recommendation.

    Each task scores +1 (upgrade), -1 (keep) or 0; ``score`` is their weighted mean, in [-1, 1]. Tasks not
    named in ``weights`` weigh 1; a weight of 0 leaves a task out of the decision (and of ``counts``).
    - "upgrade": score >= 0.5 and no weighted task says keep;
    - "keep": score <= -0.5 and no weighted task says upgrade;
    - "mixed: route per task": both upgrades and keeps, or any complementary task;
    - else "no clear difference".
    ``thresholds`` only serve to list the abilities only one model has among the reasons.

    Returns ``{verdict, score, weights, counts, reasons}``: the weights actually used (every task),
    the number of weighted tasks per verdict (all four verdicts present), and plain sentences.
    """
    if not tasks_with_verdicts:
        raise BackboneSwapError("there are no tasks to compare", "Check that the suite has tasks")
    names = [str(task["name"]) for task in tasks_with_verdicts]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise BackboneSwapError(f"task {duplicated[0]!r} appears twice", "Give every task of a suite its own name")
    for task in tasks_with_verdicts:
        if task.get("verdict") not in VERDICTS:
            raise ValueError(f"task {task['name']!r} has no valid verdict ({task.get('verdict')!r})")
    used = _effective_weights(names, weights)
    total = sum(used.values())
    weighted = [task for task in tasks_with_verdicts if used[str(task["name"])] > 0]
    score = sum(used[str(task["name"])] * _SCORE.get(task["verdict"], 0.0) for task in weighted) / total
    score = round(score, 12)  # keep 0.5 exactly 0.5 after summing weights
    groups = {v: [str(task["name"]) for task in weighted if task["verdict"] == v] for v in VERDICTS}
    counts = {v: len(groups[v]) for v in VERDICTS}

    if score >= 0.5 and not groups["keep"]:
        verdict = "upgrade"
        lead = (f"Upgrade: B is better on {counts['upgrade']} of {len(weighted)} weighted tasks and worse on none "
                f"(score {score:+.2f}).")
    elif score <= -0.5 and not groups["upgrade"]:
        verdict = "keep"
        lead = (f"Keep A: B is worse on {counts['keep']} of {len(weighted)} weighted tasks and better on none "
                f"(score {score:+.2f}).")
    elif (groups["upgrade"] and groups["keep"]) or groups["complementary"]:
        verdict = "mixed: route per task"
        if groups["upgrade"] and groups["keep"]:
            lead = (f"Mixed: B is better on some tasks and worse on others (score {score:+.2f}); "
                    "route each task to its better model.")
        else:
            lead = (f"Mixed: on some tasks the two models solve different questions (score {score:+.2f}); "
                    "route those tasks per question, or keep both.")
    else:
        verdict = "no clear difference"
        lead = (f"No clear difference: the weighted score {score:+.2f} is short of +/-0.5 and no task calls for "
                "routing.")

    reasons = [lead]
    labels = {
        "upgrade": "B is better on",
        "keep": "A is better on",
        "complementary": "They solve different questions (complementary) on",
        "no clear difference": "No clear difference on",
    }
    for v in VERDICTS:
        if groups[v]:
            reasons.append(f"{labels[v]}: {_join(groups[v])}.")
    for entry in capabilities(weighted, thresholds):
        reasons.append(f"Only {entry['who']} can do {entry['name']} at all ({entry['measure']} "
                       f"{fmt_pct(entry['rate_a'])} vs {fmt_pct(entry['rate_b'])}, A vs B).")
    reasons.extend(_needs_sentences(list(weighted)))
    ignored = [f"{task['name']} ({task['verdict']})" for task in tasks_with_verdicts if used[str(task["name"])] == 0]
    if ignored:
        reasons.append(f"Left out (weight 0): {_join(ignored)}.")
    if weights is None:
        reasons.append("Score: mean of +1 per upgrade, -1 per keep, 0 otherwise, all tasks weighted equally.")
    else:
        shown = ", ".join(f"{name}={value:g}" for name, value in used.items())
        reasons.append(f"Score: weighted mean of +1 per upgrade, -1 per keep, 0 otherwise (weights {shown}).")
    return {"verdict": verdict, "score": score, "weights": used, "counts": counts, "reasons": reasons}


# --------------------------------------------------------------------------------------------------
# --weights
# --------------------------------------------------------------------------------------------------


def parse_weights(text: str | None) -> dict[str, float] | None:
    """``task=w,task2=w2`` as a dict; None or blank gives None (equal weights).

    The name is everything before the last '=', so a task name may contain '=' but not ','. Weights must
    be finite and non-negative; a task named twice is refused rather than silently overwritten.
    """
    if text is None or not text.strip():
        return None
    out: dict[str, float] = {}
    hint = "Write --weights as task=weight,task2=weight2, e.g. vqa=2,ocr=0.5"
    for item in text.split(","):
        raw = item.strip()
        if not raw:
            raise BackboneSwapError(f"--weights {text!r} has an empty item", hint)
        name, sep, value_text = raw.rpartition("=")
        name, value_text = name.strip(), value_text.strip()
        if not sep or not name or not value_text:
            raise BackboneSwapError(f"--weights item {raw!r} is not task=weight", hint)
        try:
            value = float(value_text)
        except ValueError:
            raise BackboneSwapError(f"--weights item {raw!r}: {value_text!r} is not a number", hint) from None
        if not math.isfinite(value) or value < 0:
            raise BackboneSwapError(f"--weights item {raw!r}: the weight must be a finite number >= 0", hint)
        if name in out:
            raise BackboneSwapError(f"--weights names task {name!r} twice", hint)
        out[name] = value
    return out


def format_weights(weights: Mapping[str, float] | None) -> str:
    """The inverse of ``parse_weights``: ``parse_weights(format_weights(w)) == w``."""
    if not weights:
        return ""
    for name in weights:
        if "," in name or not name.strip() or name != name.strip():
            raise BackboneSwapError(f"task name {name!r} cannot be written in --weights form")
    return ",".join(f"{name}={float(value)!r}" for name, value in weights.items())
