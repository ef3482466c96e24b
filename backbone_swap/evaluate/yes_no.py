"""How a generated answer is read as yes or no: each benchmark's own evaluation code has its own rule, and the
same answer can count differently under two of them ("Not really" is yes for POPE, no for MME), so a yes/no
task reads its answers by its benchmark's rule (``Benchmark.read_yes_no``), POPE's when it has none.

Both rules are transcribed from the benchmarks' evaluation scripts, including their quirks, so that accuracy
here is the accuracy those scripts print for the same answers.
"""

from __future__ import annotations

from typing import Any, Literal

Answer = Literal["yes", "no", "other"]


def pope_answer(text: str) -> Answer:
    """POPE's rule (LLaVA's ``eval_pope.py``): the text up to its first '.', commas dropped, split on spaces
    only; "No", "no" or "not" among the words is no, anything else yes ("Nope", "Not really": yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def mme_answer(text: str) -> Answer:
    """MME's rule (``eval_tool/calculation.py``): lower case; exactly "yes" or "no" is itself, else "yes" in
    the first four characters is yes, then "no" there is no, else other (which is never right: MME's
    references are all yes or no). "Yes, it is" is yes; "There is a dog" is other; "Not" is no."""
    text = text.lower()
    if text in ("yes", "no"):
        return text  # type: ignore[return-value]
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def label(reference: Any) -> Answer | None:
    """An item's reference as yes or no (POPE writes "yes", MME "Yes"), None when it is neither."""
    text = str(reference).strip().lower().rstrip(".") if isinstance(reference, str) else ""
    return text if text in ("yes", "no") else None  # type: ignore[return-value]
