"""From a model's raw text output to a score, for the four task types of ``backbone-swap`` (``tasks``).

Every function here only *reads* the raw output: callers keep the text exactly as generated and can
re-score it offline whenever a rule changes (answer extraction silently moves accuracy, and harnesses that
keep only scores cannot tell by how much). Parsing failures are reported, never repaired: a new backbone that
formats its answers differently must show up as invalid outputs, not be rescued by an ever more lenient parser.

- short answers: the VQAv2 normalisation and accuracy (``normalize_vqa``, ``score_short_answer``);
- descriptions: ROUGE-L, pure Python (``rouge_l``, ``score_description``: several references combined as the COCO
  caption evaluation combines them), no Java as pycocoevalcap needs;
- structured outputs: a JSON object, a point or a box (``parse_structured``, ``score_structured``);
- multiple choice: softmax over the options' summed log-probs (``score_multiple_choice``).

Errors: a ``ValueError`` is a caller breaking a function's contract (an unknown format, an empty option
list); a ``BackboneSwapError`` is a reference in the user's data that cannot be read, which the user fixes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from backbone_swap.errors import BackboneSwapError

STRUCTURED_FORMATS = ("json", "point", "box")

# --------------------------------------------------------------------------------------------------
# Short answers: the VQAv2 normalisation and accuracy
# --------------------------------------------------------------------------------------------------

# The tables below are copied from the official VQA evaluation script (vqaEval.py, VQA API), keys and
# values verbatim, odd entries included ("none" -> "0", "somebody'd" -> "somebodyd"), so that our numbers
# match the published ones. Keys with capitals ("Im", "Ive", ...) can never match, because the official
# script lowercases before looking words up; they are kept to make the copy easy to check.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Not in the list, as in the official script: the period (handled by _PERIOD_STRIP), the apostrophe
# (contractions keep it), the colon ("10:30"), and & % $ # * ' : which are left in place.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a look-*ahead* typo that always holds,
# so what it does is: drop every period not followed by a digit ("3.5" stays, "dogs." and "3." lose it).
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: a mark next to a space, or any mark in a text holding a number
    with a thousands comma, is deleted; otherwise it becomes a space (so "t-shirt" gives "t shirt")."""
    out = text
    delete_all = _COMMA_IN_NUMBER.search(text) is not None
    for mark in _PUNCTUATION:
        # The official script tests the *original* text here, not the text modified so far; so do we.
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The official script passes re.UNICODE as the *count* argument, so it strips at most 32 periods;
    # no short answer has that many, and we strip them all.
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: number words zero..ten to digits, articles dropped, common
    contractions written without their apostrophe restored ("dont" -> "don't")."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa(text: str) -> str:
    """Normalise a short answer as the official VQAv2 evaluation does, so "Two dogs." matches "2 dogs".

    Steps: lowercase; newlines and tabs to spaces; strip; ``processPunctuation``; ``processDigitArticle``.
    One deliberate difference from the official script: it normalises the answers only when the human
    answers of a question disagree (``len(set(answers)) > 1``), so with ten identical human answers an
    unnormalised prediction ("Yes.") scores 0. We always normalise the prediction and the references, as
    lmms-eval's ``EvalAIAnswerProcessor`` does for the prediction; on the (already normalised) VQAv2
    answers this changes nothing else.
    """
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def score_short_answer(prediction: str, references: str | Sequence[str]) -> float:
    """Score a short answer by exact match after ``normalize_vqa``; with human votes, the VQA accuracy.

    - One reference (a string, or a list of one): 1.0 on a match, else 0.0.
    - Four or more references are annotator votes (VQAv2 has ten): the official VQA accuracy, the mean over
      the leave-one-annotator-out subsets of min(1, matches among the others / 3). Ten answers of which
      k match give 0.3, 0.6, 0.9 and 1.0 for k = 1, 2, 3, >= 4.
    - Two or three references are accepted alternatives ("grey", "gray"): 1.0 if any matches. The vote
      formula needs three *other* annotators to agree before it can reach 1, so with fewer than four
      references it would cap a unanimous answer at 1/3 or 2/3.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("score_short_answer needs at least one reference answer")
    answer = normalize_vqa(prediction)
    matches = [normalize_vqa(ref) == answer for ref in refs]
    if len(refs) < 4:
        return 1.0 if any(matches) else 0.0
    total = sum(matches)
    per_subset = [min(1.0, (total - int(left_out)) / 3.0) for left_out in matches]
    return float(sum(per_subset) / len(per_subset))


# --------------------------------------------------------------------------------------------------
# Descriptions: ROUGE-L
# --------------------------------------------------------------------------------------------------

# pycocoevalcap's Rouge uses beta = 1.2 (recall weighted a little more than precision); we use the same,
# so that the numbers read like the COCO-caption ROUGE-L that papers report.
ROUGE_BETA = 1.2
_TOKEN = re.compile(r"[^\W_]+")


def _tokens(text: str) -> list[str]:
    """Lowercased runs of letters and digits; punctuation and whitespace only separate ("don't" gives
    "don", "t" on both sides alike), standing in for the Java PTB tokenizer pycocoevalcap calls."""
    return _TOKEN.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by the usual dynamic programme kept to two rows."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_f(precision: float, recall: float) -> float:
    """F = (1 + beta^2) P R / (R + beta^2 P) with beta = ``ROUGE_BETA``; 0.0 when P or R is 0."""
    if precision == 0.0 or recall == 0.0:
        return 0.0
    beta2 = ROUGE_BETA**2
    return (1 + beta2) * precision * recall / (recall + beta2 * precision)


def _precision_recall(prediction: Sequence[str], reference: Sequence[str]) -> tuple[float, float]:
    """LCS / len(prediction) and LCS / len(reference) (0.0 each when either side has no tokens)."""
    if not prediction or not reference:
        return 0.0, 0.0
    lcs = _lcs_length(prediction, reference)
    return lcs / len(prediction), lcs / len(reference)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one prediction against one reference, with beta = ``ROUGE_BETA`` (1.2).

    With LCS the longest common token subsequence, P = LCS / len(prediction), R = LCS / len(reference),
    F = (1 + beta^2) P R / (R + beta^2 P). 0.0 when either side has no tokens or nothing in common.
    """
    return _rouge_f(*_precision_recall(_tokens(prediction), _tokens(reference)))


def score_description(prediction: str, references: str | Sequence[str]) -> float:
    """Score a description: ROUGE-L against its references combined as the COCO caption evaluation does.

    pycocoevalcap's ``Rouge.calc_score`` computes the precision and the recall against each reference, takes
    the best precision and the best recall (possibly of two different references) and forms one F-measure of
    the two. We do the same, so that numbers read like the published COCO-caption ROUGE-L. This is at least
    the best single-reference F-measure and can exceed it: a short prediction may be wholly contained in one
    reference (best precision) while covering most of another, shorter one (best recall). With one reference
    it is ``rouge_l``.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("score_description needs at least one reference description")
    tokens = _tokens(prediction)
    pairs = [_precision_recall(tokens, _tokens(ref)) for ref in refs]
    return _rouge_f(max(p for p, _ in pairs), max(r for _, r in pairs))


# --------------------------------------------------------------------------------------------------
# Structured outputs: a JSON object, a point, a box
# --------------------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def _bracketed(count: int) -> re.Pattern[str]:
    """``count`` numbers between commas, inside a matching pair of round or square brackets."""
    inner = r"\s*,\s*".join(f"({_NUMBER})" for _ in range(count))
    return re.compile(rf"\(\s*{inner}\s*\)|\[\s*{inner}\s*\]")


_POINT = _bracketed(2)
_BOX = _bracketed(4)


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; Python's decoder accepts them unless told otherwise."""
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _end_of_braces(text: str, start: int) -> int | None:
    """Index just past the ``}`` that closes the ``{`` at ``start`` (braces inside double-quoted strings do
    not count), or None when it never closes, as in an output cut off by the token limit."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first top-level JSON object in ``text``: inside code fences or between words alike.

    A ``{`` that does not start valid JSON is skipped *with everything up to its closing brace*: the
    malformed ``{'a': 1, "b": {"c": 2}}`` is a failure, not the object ``{"c": 2}`` nested inside it. A
    ``{`` that never closes (an object cut off by the token limit) ends the search with None; the price is
    that a stray unmatched ``{`` in prose before a valid object also gives None.
    """
    position = text.find("{")
    while position != -1:
        try:
            value, _ = _DECODER.raw_decode(text, position)
        except ValueError:
            end = _end_of_braces(text, position)
            if end is None:
                return None
            position = text.find("{", end)
            continue
        return value  # JSON that starts with "{" can only be an object
    return None


def _is_number(value: object) -> bool:
    """A finite real number; bools are not numbers here, although Python says True == 1."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _numbers_from_keys(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[float, ...] | None:
    """The values under ``keys`` as floats when all are present and numeric (JSON numbers, not strings)."""
    if not all(key in obj and _is_number(obj[key]) for key in keys):
        return None
    return tuple(float(obj[key]) for key in keys)


def _valid_box(box: tuple[float, ...] | None) -> tuple[float, float, float, float] | None:
    """The box if its corners are ordered (x1 <= x2, y1 <= y2); a box drawn backwards is invalid."""
    if box is None:
        return None
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        return None
    return (x1, y1, x2, y2)


def _parse_coordinates(text: str, keys: tuple[str, ...], pattern: re.Pattern[str]) -> tuple[float, ...] | None:
    """A JSON object carrying ``keys`` if the text has one, else the first bracketed tuple of numbers."""
    obj = _first_json_object(text)
    if obj is not None:
        values = _numbers_from_keys(obj, keys)
        if values is not None:
            return values
    match = pattern.search(text)
    if match is None:
        return None
    values = tuple(float(group) for group in match.groups() if group is not None)
    return values if all(math.isfinite(v) for v in values) else None


def parse_structured(text: str, fmt: str) -> object | None:
    """Read a structured answer out of raw model text; None when the text does not hold one.

    - ``"json"``: the first JSON object (a dict), fenced or surrounded by words; strict JSON only
      (single quotes, trailing commas, NaN are invalid).
    - ``"point"``: ``(x, y)``, ``[x, y]`` or a JSON object with numeric ``x`` and ``y`` -> (x, y).
    - ``"box"``: ``[x1, y1, x2, y2]``, ``(x1, y1, x2, y2)`` or a JSON object with numeric ``x1, y1, x2, y2``
      -> a 4-tuple; None when x2 < x1 or y2 < y1.

    A JSON object with the right keys is preferred over a bracketed tuple; otherwise the first bracketed
    tuple counts, and only the first: if it is invalid, the answer is invalid (no hunting for a later one).
    """
    if fmt == "json":
        return _first_json_object(text)
    if fmt == "point":
        return _parse_coordinates(text, ("x", "y"), _POINT)
    if fmt == "box":
        return _valid_box(_parse_coordinates(text, ("x1", "y1", "x2", "y2"), _BOX))
    raise ValueError(f"unknown structured format {fmt!r}; expected one of {', '.join(STRUCTURED_FORMATS)}")


@dataclass(frozen=True)
class StructuredScore:
    """The score of one structured answer.

    ``valid``: the output could be parsed (report the invalid rate per model: a new backbone may format its
    answers differently). ``error``: None when invalid; else the Euclidean distance (point), 1 - IoU (box),
    or the fraction of reference keys whose values differ (json). ``correct``: valid and error within
    the tolerance (for json, no key differs).
    """

    valid: bool
    error: float | None
    correct: bool


def _reference_value(reference: object, fmt: str) -> object:
    """The reference as a parsed value: strings are parsed like predictions, values are checked."""
    if isinstance(reference, str):
        value = parse_structured(reference, fmt)
    elif fmt == "json":
        value = reference if isinstance(reference, dict) else None
    else:
        keys = ("x", "y") if fmt == "point" else ("x1", "y1", "x2", "y2")
        if isinstance(reference, dict):
            value = _numbers_from_keys(reference, keys)
        elif isinstance(reference, (tuple, list, np.ndarray)) and len(reference) == len(keys) and all(
            _is_number(v) for v in reference
        ):
            value = tuple(float(v) for v in reference)
        else:
            value = None
        if fmt == "box":
            value = _valid_box(value)
    if value is None:
        shown = repr(reference)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise BackboneSwapError(
            f"The reference {shown} is not a valid {fmt} answer",
            "Write points as [x, y] or {\"x\": .., \"y\": ..}, boxes as [x1, y1, x2, y2] with x1 <= x2 and "
            "y1 <= y2, and json references as one JSON object",
        )
    return value


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; two empty boxes agree only if identical."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    if union <= 0.0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return intersection / union


def _json_equal(prediction: object, reference: object, tolerance: float) -> bool:
    """Recursive equality, numbers within ``tolerance``; strings exactly; bools and None only as
    themselves (so ``true`` does not equal ``1``). Keys the reference lacks are ignored at every level."""
    if isinstance(reference, bool) or reference is None:
        return type(prediction) is type(reference) and prediction == reference
    if _is_number(reference):
        return _is_number(prediction) and abs(float(prediction) - float(reference)) <= tolerance
    if isinstance(reference, dict):
        return isinstance(prediction, dict) and all(
            key in prediction and _json_equal(prediction[key], value, tolerance) for key, value in reference.items()
        )
    if isinstance(reference, list):
        return (isinstance(prediction, list) and len(prediction) == len(reference)
                and all(_json_equal(p, r, tolerance) for p, r in zip(prediction, reference, strict=True)))
    return prediction == reference


def score_structured(prediction: str, reference: object, fmt: str, *, tolerance: float) -> StructuredScore:
    """Score a structured answer against a reference given as text or as a parsed value.

    ``tolerance`` is in the unit of the error: coordinate units for points (pixels, or fractions of the
    image for normalised coordinates), 1 - IoU for boxes (0.5 is the usual IoU >= 0.5 criterion), and the
    allowed absolute difference between numbers for json. Extra keys in a json prediction are ignored;
    an empty json reference makes any valid object correct (a pure format-compliance check).
    """
    if fmt not in STRUCTURED_FORMATS:
        raise ValueError(f"unknown structured format {fmt!r}; expected one of {', '.join(STRUCTURED_FORMATS)}")
    if not _is_number(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    ref = _reference_value(reference, fmt)
    parsed = parse_structured(prediction, fmt)
    if parsed is None:
        return StructuredScore(valid=False, error=None, correct=False)
    if fmt == "point":
        error = math.dist(parsed, ref)
        return StructuredScore(valid=True, error=error, correct=error <= tolerance)
    if fmt == "box":
        error = 1.0 - _iou(parsed, ref)
        return StructuredScore(valid=True, error=error, correct=error <= tolerance)
    assert isinstance(parsed, dict) and isinstance(ref, dict)
    if not ref:
        return StructuredScore(valid=True, error=0.0, correct=True)
    wrong = sum(not (key in parsed and _json_equal(parsed[key], value, tolerance)) for key, value in ref.items())
    error = wrong / len(ref)
    return StructuredScore(valid=True, error=error, correct=wrong == 0)


# --------------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceScore:
    """The score of one multiple-choice question.

    ``probabilities``: softmax over the options of each option's summed token log-probs (a probability,
    unlike the mean loss some harnesses rank by); ``choice``: the most probable option (the lowest index on
    an exact tie); ``confidence``: its probability, the input to calibration.
    """

    choice: int
    probabilities: list[float]
    confidence: float
    correct: bool


def score_multiple_choice(option_logprobs: Sequence[float], answer_index: int) -> ChoiceScore:
    """Score a multiple-choice question from the summed log-prob of each option.

    The softmax goes through log-sum-exp (the maximum subtracted first), so log-probs like -1000 and
    -1001 give 0.731 / 0.269 instead of 0/0. An option may have log-prob -inf (probability 0), not all.
    """
    logprobs = np.asarray(option_logprobs, dtype=np.float64)
    if logprobs.ndim != 1 or logprobs.size == 0:
        raise ValueError("score_multiple_choice needs a non-empty flat list of option log-probs")
    if np.isnan(logprobs).any() or np.isposinf(logprobs).any():
        raise ValueError(f"option log-probs must be finite or -inf, got {option_logprobs!r}")
    if np.isneginf(logprobs).all():
        raise ValueError("every option has log-prob -inf; there is no distribution to normalise")
    if isinstance(answer_index, bool) or not isinstance(answer_index, (int, np.integer)):
        raise ValueError(f"answer_index must be an integer, got {answer_index!r}")
    if not 0 <= answer_index < logprobs.size:
        raise ValueError(f"answer_index {answer_index} is out of range for {logprobs.size} options")
    shifted = logprobs - logprobs.max()
    log_probabilities = shifted - np.log(np.exp(shifted).sum())
    probabilities = np.exp(log_probabilities)
    choice = int(np.argmax(probabilities))
    return ChoiceScore(
        choice=choice,
        probabilities=[float(p) for p in probabilities],
        confidence=float(probabilities[choice]),
        correct=choice == int(answer_index),
    )
