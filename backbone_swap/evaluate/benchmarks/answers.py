"""How the benchmarks' own evaluation code reads a model's answer, shared by the registry entries.

A benchmark's official metrics are computed again from each answer line's raw ``prediction``, the way the
benchmark's evaluation script reads it, not from the line's ``score`` (which follows the task type's rule). So
the two can differ where the official reading is stricter or looser, and the official numbers stay comparable
with published ones.

- ``evalai_normalize`` / ``vqa_accuracy``: TextVQA's answer processing and soft accuracy, as the m4c evaluator
  (LLaVA's ``m4c_evaluator.py``, lmms-eval's ``EvalAIAnswerProcessor``) computes them.
- ``lettered``: a multiple-choice question with its options listed as ``A. ...`` lines, as LLaVA's and
  lmms-eval's ScienceQA and SEED-Bench prompts list them.
- ``option_index``: which option an answer line chose, from its text (the option itself, as a task answered by
  the options' likelihood writes it, or a letter, as a generated answer gives it).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

from backbone_swap.evaluate.scoring import normalize_vqa

LETTERS = string.ascii_uppercase


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a group the evaluated items do not reach)."""
    return sum(values) / len(values) if values else None


def evalai_normalize(text: str) -> str:
    """The EvalAI answer processor of the m4c evaluator: its ``word_tokenize`` (lowercase, commas and question
    marks dropped, "'s" split off as " 's") before the VQA normalisation (``scoring.normalize_vqa``), which is
    the same as the processor's punctuation, digit and article steps."""
    return normalize_vqa(text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip())


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's soft accuracy of one answer: both sides through ``evalai_normalize``, then the mean over the
    leave-one-annotator-out subsets of min(1, matching answers among the others / 3)."""
    predicted = evalai_normalize(prediction)
    matches = [evalai_normalize(answer) == predicted for answer in answers]
    total = sum(matches)
    return sum(min(1.0, (total - int(own)) / 3) for own in matches) / len(matches)


def lettered(question: str, choices: Sequence[str]) -> str:
    """The question followed by one ``A. option`` line per option."""
    return "\n".join([question, *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))])


def option_index(prediction: str, choices: Sequence[str], letter: Callable[[str], str | None]) -> int | None:
    """The index of the option an answer chose: the option's own text, else the letter the benchmark's script
    reads from the answer (``letter``), if it names one of the options; None when it names none."""
    if prediction in choices:
        return list(choices).index(prediction)
    found = letter(prediction)
    if found is not None and found in LETTERS[: len(choices)]:
        return LETTERS.index(found)
    return None
