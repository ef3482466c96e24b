"""The task types of a suite, one registry entry each: how an item is answered, scored, scored again from its raw
output, and summarised for the comparison.

- ``short_answer``: a generated answer, VQA-normalised exact match; with ten annotator answers, VQA accuracy (partial
  credit: 2 of 10 annotators give 0.6), which accuracy and calibration use as published VQAv2 numbers do.
- ``multiple_choice``: no generation: each option's summed log-likelihood after the prompt, softmax over options.
- ``description``: a generated description, ROUGE-L against the reference(s), correct from ``pass_score``.
- ``structured``: a generated JSON object, point or box, scored on validity and error (``format``, ``tolerance``).
- ``yes_no``: a generated answer read as yes or no by the benchmark's own rule (POPE's unless the task's benchmark
  has another, ``yes_no.py``), right when it is the reference; the line keeps the raw answer and adds ``parsed``.

Whether an answer *solves* its question is a yes or no that the comparison's paired statistics need (overlap,
McNemar, phi, kappa, Jaccard, oracle, complementarity): ``TaskType.solved``, worded by ``TaskType.solved_when`` for
the report. Partial credit (VQA accuracy, a harness's per-sample score) is binarised by one rule, ``is_full_credit``:
an answer solves its question when its credit is 1. Accuracy, its difference and calibration keep the credit itself.

The runner, the comparison and the suite loader ask the entry of a task's type; a new type is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate import scoring, yes_no

# Credits within this of 1 are full: a per-sample score read from another tool's JSON may be 0.9999999999.
_FULL = 1.0 - 1e-9


def is_full_credit(credit: float) -> bool:
    """The one binarisation of partial credit: an answer solves its question when its credit is 1.

    For a VQAv2 answer that means a VQA accuracy of 1: at least 4 of the 10 annotators gave it (3 give 0.9, which
    accuracy counts but a solved question does not). Every paired statistic of a comparison counts solved questions
    by this rule, so they are all about the same questions; accuracy and calibration keep the partial credit, as
    published numbers do.
    """
    return credit >= _FULL


def full_credit_rule(credit: str, detail: str = "") -> str:
    """``is_full_credit`` in words, for the report: ``credit`` names what the credit is (``its VQA accuracy``)."""
    return (f"{credit} is 1{detail}; accuracy, its difference and calibration count the partial credit, the paired "
            "statistics (overlap, McNemar, phi, kappa, oracle, complementarity) the solved questions")


@dataclass(frozen=True)
class TaskType:
    """What one task type does with an item. ``answered_by`` is ``generation`` (greedy text) or ``options`` (the
    likelihood of each listed option)."""

    name: str
    answered_by: Literal["generation", "options"] = "generation"

    def check_task(self, settings: dict[str, Any]) -> tuple[str, str] | None:
        """(key, problem) when the task's settings in a suite do not fit this type."""
        return None

    def check_item(self, item: dict[str, Any]) -> str | None:
        """What an item of the task's data lacks for this type (None: it is fine)."""
        return None

    def score(self, task: Any, item: dict[str, Any], prediction: str, confidence: float | None) -> dict[str, Any]:
        """The answer line of a generated ``prediction``: correctness, score and what the type adds (``confidence``
        None: answers of another tool, which records none)."""
        line = {"id": str(item["id"]), "prediction": prediction, "reference": item["answer"], "confidence": confidence}
        return line | self._judge(task, item, prediction)

    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        raise NotImplementedError

    def rescore(self, task: Any, item: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
        """``line`` scored again from its raw output against the item as the task holds it now."""
        return dict(line) | self.score(task, item, line["prediction"], float(line["confidence"]))

    def credit(self, line: dict[str, Any]) -> float:
        """What an answer counts for in accuracy and calibration: 1 or 0 unless the type gives partial credit."""
        return float(bool(line["correct"]))

    def solved(self, line: dict[str, Any]) -> bool:
        """Whether the answer solves its question, for the paired statistics: its ``correct``, which ``_judge`` sets
        by the type's rule (``is_full_credit`` where the type gives partial credit)."""
        return bool(line["correct"])

    def solved_when(self, task: Any) -> str:
        """``solved``'s rule for ``task`` in words, written into the report (``tasks[].solved_when``); a type whose
        answers are right or wrong, with no partial credit, may keep this one."""
        return "it is scored right (no partial credit)"

    def summary(self, lines: list[dict[str, Any]]) -> dict[str, float | None]:
        """Figures the comparison reports besides accuracy: the share of outputs that parse, and their mean error."""
        return {"valid_rate": None, "mean_error": None}


class ShortAnswer(TaskType):
    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        score = scoring.score_short_answer(prediction, item["answer"])
        return {"correct": is_full_credit(score), "score": score}

    def credit(self, line: dict[str, Any]) -> float:
        # the VQA score of the answer (files written before scores were recorded: its correctness)
        return float(line["score"]) if line.get("score") is not None else super().credit(line)

    def solved_when(self, task: Any) -> str:
        return full_credit_rule("its VQA accuracy", " (at least 4 of 10 annotators gave the answer; with fewer than 4 "
                                "reference answers, it matches one of them)")


class MultipleChoice(TaskType):
    def check_item(self, item: dict[str, Any]) -> str | None:
        choices = item.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or item["answer"] not in choices:
            return "needs 'choices' (2 or more) containing the answer"
        return None

    def options(self, item: dict[str, Any]) -> list[str]:
        return [str(choice) for choice in item["choices"]]

    def score_options(self, task: Any, item: dict[str, Any], logprobs: list[float]) -> dict[str, Any]:
        """The answer line from the summed log-probability of each option."""
        if any(math.isnan(lp) or lp == math.inf for lp in logprobs) or all(lp == -math.inf for lp in logprobs):
            raise BackboneSwapError(
                f"task {task.name}, item {item['id']!r}: the model gave its options the log-probabilities "
                f"{logprobs}, which are no distribution over them (NaN or infinite logits)",
                "The model's logits overflow or are broken; float16 overflow is a common cause",
            )
        choices = self.options(item)
        result = scoring.score_multiple_choice(logprobs, choices.index(str(item["answer"])))
        return {"id": str(item["id"]), "prediction": choices[result.choice], "reference": item["answer"],
                "correct": result.correct, "score": float(result.correct), "confidence": result.confidence,
                "probabilities": result.probabilities}

    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        correct = prediction == str(item["answer"])
        return {"correct": correct, "score": float(correct)}

    def solved_when(self, task: Any) -> str:
        return "it picks the right option (no partial credit)"


class Description(TaskType):
    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        score = scoring.score_description(prediction, item["answer"])
        return {"correct": score >= task.pass_score, "score": score}

    def solved_when(self, task: Any) -> str:
        return (f"its ROUGE-L is at least {task.pass_score:g} (the task's pass_score); accuracy is the share of "
                "questions solved")


class Structured(TaskType):
    def check_task(self, settings: dict[str, Any]) -> tuple[str, str] | None:
        if settings.get("format") not in scoring.STRUCTURED_FORMATS:
            return "format", f"must be one of {', '.join(scoring.STRUCTURED_FORMATS)} for a structured task"
        return None

    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        result = scoring.score_structured(prediction, item["answer"], task.format, tolerance=task.tolerance)
        return {"correct": result.correct, "valid": result.valid, "error": result.error,
                "score": float(result.correct)}

    def solved_when(self, task: Any) -> str:
        return (f"it parses as {task.format} and its error is at most {task.tolerance:g} (the task's tolerance); "
                "accuracy is the share of questions solved")

    def summary(self, lines: list[dict[str, Any]]) -> dict[str, float | None]:
        errors = [line["error"] for line in lines if line.get("valid") and line.get("error") is not None]
        return {"valid_rate": float(np.mean([bool(line.get("valid")) for line in lines])) if lines else None,
                "mean_error": float(np.mean(errors)) if errors else None}


class YesNo(TaskType):
    def check_item(self, item: dict[str, Any]) -> str | None:
        return None if yes_no.label(item["answer"]) is not None else "needs an answer of yes or no"

    @staticmethod
    def rule(task: Any) -> Callable[[str], str]:
        """How the task's benchmark reads a yes or no (POPE's rule for our own data and benchmarks without one).

        Asked at every scoring, so answers written under an older rule are read again by the current one."""
        name = getattr(task, "benchmark", None)
        if name:
            from backbone_swap.evaluate.benchmarks import BENCHMARKS  # benchmark entries may import task types

            if BENCHMARKS[name].read_yes_no is not None:
                return BENCHMARKS[name].read_yes_no
        return yes_no.pope_answer

    def _judge(self, task: Any, item: dict[str, Any], prediction: str) -> dict[str, Any]:
        parsed = self.rule(task)(prediction)
        correct = parsed == yes_no.label(item["answer"])
        return {"parsed": parsed, "correct": correct, "score": float(correct)}


TYPES: dict[str, TaskType] = {
    "short_answer": ShortAnswer("short_answer"),
    "multiple_choice": MultipleChoice("multiple_choice", answered_by="options"),
    "description": Description("description"),
    "structured": Structured("structured"),
    "yes_no": YesNo("yes_no"),
}
TASK_TYPES: tuple[str, ...] = tuple(TYPES)


def score_item(task: Any, item: dict[str, Any], prediction: str, confidence: float) -> dict[str, Any]:
    """The answer line of a generated ``prediction`` to ``item`` of ``task``, scored as its type scores."""
    return TYPES[task.type].score(task, item, prediction, confidence)


def reference_text(item: dict[str, Any]) -> str:
    """The reference answer as one text (the probes teacher-force it): with several annotators' answers, the most
    common one, as VQAv2's ``multiple_choice_answer`` is."""
    answer = item["answer"]
    if isinstance(answer, list) and answer:
        return str(max(answer, key=answer.count))
    return str(answer)
