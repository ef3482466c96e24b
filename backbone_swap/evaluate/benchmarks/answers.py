"""How the benchmarks' own evaluation code reads a model's answer, shared by the registry entries.

A benchmark's official metrics are computed again from each answer line's raw ``prediction``, the way the
benchmark's evaluation script reads it, not from the line's ``score`` (which follows the task type's rule). So
the two can differ where the official reading is stricter or looser, and the official numbers stay comparable
with published ones.

- ``evalai_normalize`` / ``vqa_accuracy``: TextVQA's answer processing and soft accuracy, as the m4c evaluator
  (LLaVA's ``m4c_evaluator.py``, lmms-eval's ``EvalAIAnswerProcessor``) computes them.
- ``lettered``: a multiple-choice question as LLaVA's and lmms-eval's ScienceQA and SEED-Bench prompts ask it: its
  options listed as ``A. ...`` lines, then the instruction to answer with the option's letter. The options of
  such an item are the letters (the likelihood of each letter after the prompt picks one, as for MMBench).
- ``option_letter``: which option an answer line chose: its letter, as the likelihood of the options writes it,
  or the letter the benchmark's script reads from a generated answer.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

from backbone_swap.evaluate.scoring import normalize_vqa

LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."


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


def lettered(question: str, options: Sequence[str]) -> str:
    """The question, one ``A. option`` line per option, and the instruction to answer with the letter."""
    return "\n".join([question, *(f"{LETTERS[i]}. {option}" for i, option in enumerate(options)), INSTRUCTION])


def option_letter(prediction: str, count: int, read: Callable[[str], str | None]) -> str | None:
    """The letter of the option an answer chose among ``count``: the answer itself when it is one of their letters,
    else the letter the benchmark's script reads from a generated answer (``read``) if it is one of them; None
    when it names none of them (the scripts count it wrong)."""
    found = prediction if prediction in LETTERS[:count] else read(prediction)
    return found if found is not None and found in LETTERS[:count] else None
