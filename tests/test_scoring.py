"""Scoring of raw model outputs, checked against hand-worked expectations and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate import scoring
from backbone_swap.evaluate.scoring import (
    ChoiceScore,
    StructuredScore,
    normalize_vqa,
    parse_structured,
    rouge_l,
    score_description,
    score_multiple_choice,
    score_short_answer,
    score_structured,
)


def test_every_task_type_scores_rescores_and_credits_its_answers():
    from types import SimpleNamespace

    from backbone_swap.evaluate.tasks import TASK_TYPES, TYPES

    assert TASK_TYPES == ("short_answer", "multiple_choice", "description", "structured", "yes_no")
    task = SimpleNamespace(name="t", format="point", tolerance=1.5, pass_score=0.5)
    votes = ["2"] * 2 + ["two dogs"] * 8  # 2 of 10 annotators: VQA accuracy 0.6
    short = TYPES["short_answer"].score(task, {"id": 1, "answer": votes}, "Two.", 0.9)
    assert (short["id"], short["correct"], short["score"], short["confidence"]) == ("1", False, 0.6, 0.9)
    assert TYPES["short_answer"].credit(short) == 0.6 and TYPES["description"].credit(short) == 0.0
    point = TYPES["structured"].score(task, {"id": "p", "answer": "[10, 21]"}, "at (10, 20)", 0.5)
    assert (point["valid"], point["error"], point["correct"]) == (True, 1.0, True)
    moved = TYPES["structured"].rescore(task, {"id": "p", "answer": "[10, 25]"}, point)
    assert (moved["error"], moved["correct"], moved["confidence"]) == (5.0, False, 0.5)
    invalid = TYPES["structured"].score(task, {"id": "q", "answer": "[0, 0]"}, "somewhere", 0.1)
    assert TYPES["structured"].summary([point, invalid]) == {"valid_rate": 0.5, "mean_error": 1.0}
    assert TYPES["short_answer"].summary([short]) == {"valid_rate": None, "mean_error": None}
    caption = TYPES["description"].score(task, {"id": "d", "answer": "a red square"}, "a red square", 0.7)
    assert caption["score"] == pytest.approx(1.0) and caption["correct"]
    choice = TYPES["multiple_choice"]
    item = {"id": "m", "answer": "blue", "choices": ["red", "blue"]}
    line = choice.score_options(task, item, [math.log(0.25), math.log(0.75)])
    assert (line["prediction"], line["correct"], line["confidence"]) == ("blue", True, pytest.approx(0.75))
    assert choice.rescore(task, {**item, "answer": "red"}, line)["correct"] is False
    assert choice.check_item({"answer": "green", "choices": ["red", "blue"]}) is not None
    assert TYPES["structured"].check_task({"format": "circle"}) == (
        "format", "must be one of json, point, box for a structured task")
    assert TYPES["structured"].check_task({"format": "box"}) is None
    yes_no = TYPES["yes_no"]  # POPE's rule without a benchmark: "not" as a word is no, anything else yes
    said = yes_no.score(task, {"id": "y", "answer": "no"}, "There is not a dog, I think.", 0.8)
    assert (said["prediction"], said["parsed"], said["correct"], said["score"]) == (
        "There is not a dog, I think.", "no", True, 1.0)
    assert yes_no.rescore(task, {"id": "y", "answer": "Yes"}, said)["correct"] is False  # from the raw answer
    assert yes_no.score(task, {"id": "z", "answer": "yes"}, "Not really", 0.5)["parsed"] == "yes"  # "Not" is no word
    assert yes_no.check_item({"answer": "maybe"}) == "needs an answer of yes or no"
    assert yes_no.check_item({"answer": "No"}) is None and yes_no.credit(said) == 1.0


# --------------------------------------------------------------------------------------------------
# Short answers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, trailing period dropped
        ("the cat", "cat"),  # article dropped
        ("A cat", "cat"),
        ("an apple", "apple"),
        ("1,000", "1000"),  # thousands comma deleted, not turned into a space
        ("3.5", "3.5"),  # a period before a digit stays
        ("3.", "3"),
        ("Don't", "don't"),
        ("dont", "don't"),  # the contractions table restores the apostrophe
        ("DONT.", "don't"),
        ("isnt", "isn't"),
        ("yes!", "yes"),  # "!" not next to a space becomes a space, then split/join drops it
        ("Yes", "yes"),
        ("  no\n", "no"),
        ("red\tand white", "red and white"),
        ("t-shirt", "t shirt"),  # "-" alone becomes a space
        ("cat , dog", "cat dog"),  # "," next to a space is deleted
        ("10:30", "10:30"),  # ":" is not in the official punctuation list
        ("none", "0"),  # the official manualMap maps "none" to "0"
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("", ""),
    ],
)
def test_normalize_vqa_follows_the_official_script(raw, expected):
    assert normalize_vqa(raw) == expected


def test_normalize_vqa_leaves_its_input_alone_and_is_idempotent():
    raw = "Two dogs."
    once = normalize_vqa(raw)
    assert raw == "Two dogs."
    assert normalize_vqa(once) == once


def test_short_answer_with_one_reference_is_exact_match_after_normalisation():
    assert score_short_answer("Two dogs.", "2 dogs") == 1.0
    assert score_short_answer("two", ["2"]) == 1.0
    assert score_short_answer("3 dogs", "2 dogs") == 0.0
    assert score_short_answer("3.5", "35") == 0.0  # the period between digits is kept


@pytest.mark.parametrize(
    "k, expected",
    [
        # Ten answers, k of them equal to the prediction. Leaving out annotator i leaves 9 answers:
        # if i matched, k - 1 of them match, else k. Accuracy of a subset: min(1, matches / 3).
        # k = 0: every subset 0                                   -> 0
        (0, 0.0),
        # k = 1: 1 subset with 0, 9 subsets with 1/3: (0 + 9/3) / 10 = 3/10
        (1, 0.3),
        # k = 2: 2 subsets with 1/3, 8 with 2/3: (2/3 + 16/3) / 10 = 6/10
        (2, 0.6),
        # k = 3: 3 subsets with 2/3, 7 with 1: (2 + 7) / 10 = 9/10
        (3, 0.9),
        # k = 4: 4 subsets with 3/3, 6 with min(1, 4/3) = 1       -> 1
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_with_ten_annotators(k, expected):
    references = ["two"] * k + ["3"] * (10 - k)
    assert score_short_answer("2", references) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_normalises_each_annotator_answer():
    # "Yes", "yes." and "YES!" are the same answer: k = 3 -> 0.9 (see the worked table above).
    references = ["Yes", "yes.", "YES!", "no", "no", "no", "no", "no", "no", "no"]
    assert score_short_answer("yes", references) == pytest.approx(0.9)
    # With 5 annotators and 1 match: 1 subset with 0, 4 with 1/3 -> (4/3) / 5 = 4/15.
    assert score_short_answer("yes", ["yes", "no", "no", "no", "no"]) == pytest.approx(4 / 15)


def test_two_or_three_references_are_alternatives():
    assert score_short_answer("gray", ["grey", "gray"]) == 1.0
    assert score_short_answer("grey", ["grey", "gray", "silver"]) == 1.0
    assert score_short_answer("white", ["grey", "gray"]) == 0.0


def test_short_answer_refuses_no_reference():
    with pytest.raises(ValueError):
        score_short_answer("yes", [])


# --------------------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------------------


def test_rouge_l_on_a_hand_computed_example():
    # prediction: the cat on the mat                 (5 tokens)
    # reference:  The black cat sat on the mat.      (7 tokens after lowercasing and dropping ".")
    # LCS = the cat on the mat = 5, P = 5/5 = 1, R = 5/7
    # F(beta=1.2) = (1 + 1.44) * 1 * 5/7 / (5/7 + 1.44 * 1) = 12.2 / (5 + 10.08) = 12.2 / 15.08
    assert scoring.ROUGE_BETA == 1.2
    assert rouge_l("the cat on the mat", "The black cat sat on the mat.") == pytest.approx(12.2 / 15.08)


def test_rouge_l_needs_the_longest_subsequence_not_a_greedy_one():
    # prediction: a b c d e, reference: b a d c e. Common subsequences of length 3 (a c e, b d e, ...),
    # none of length 4 (a and b, c and d are swapped). P = R = 3/5, so F = 3/5 whatever beta is.
    assert scoring._lcs_length(list("abcde"), list("badce")) == 3
    assert rouge_l("a b c d e", "b a d c e") == pytest.approx(0.6)
    # A greedy matcher taking "e" from the front of the prediction would find only 1 here; LCS = x y z = 3.
    assert scoring._lcs_length(list("exyz"), list("xyze")) == 3


def test_rouge_l_edge_cases():
    assert rouge_l("A dog, running!", "a dog running") == pytest.approx(1.0)
    assert rouge_l("completely different", "nothing shared") == 0.0
    assert rouge_l("", "a dog") == 0.0
    assert rouge_l("...", "a dog") == 0.0


def test_score_description_takes_the_best_reference():
    references = ["nothing in common", "the black cat sat on the mat"]
    assert score_description("the cat on the mat", references) == pytest.approx(12.2 / 15.08)
    assert score_description("the cat on the mat", "the cat on the mat") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        score_description("x", [])


def test_several_references_combine_the_best_precision_and_the_best_recall_as_coco_does():
    # prediction: a cat sat                                         (3 tokens)
    # reference 1: a black cat sat on a mat (7 tokens): LCS = a cat sat = 3, P = 1, R = 3/7
    #   F1 = 2.44 * 1 * 3/7 / (3/7 + 1.44) = 7.32 / 13.08
    # reference 2: the cat sat (3 tokens): LCS = cat sat = 2, P = R = 2/3, F2 = 2/3
    # pycocoevalcap: P = max(1, 2/3) = 1, R = max(3/7, 2/3) = 2/3,
    #   F = 2.44 * 2/3 / (2/3 + 1.44) = 4.88 / 6.32, above the best single F (2/3)
    references = ["a black cat sat on a mat", "the cat sat"]
    assert rouge_l("a cat sat", references[0]) == pytest.approx(7.32 / 13.08)
    assert rouge_l("a cat sat", references[1]) == pytest.approx(2 / 3)
    assert score_description("a cat sat", references) == pytest.approx(4.88 / 6.32)
    assert score_description("a cat sat", references[::-1]) == pytest.approx(4.88 / 6.32)
    assert score_description("a cat sat", references[:1]) == pytest.approx(7.32 / 13.08)
    assert score_description("zebra", references) == 0.0


# --------------------------------------------------------------------------------------------------
# Structured outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! Here:\n```json\n{"label": "cat", "count": 2}\n```\nHope that helps.', {"label": "cat", "count": 2}),
        ('The answer is {"a": {"b": [1, 2]}} and then {"c": 3}.', {"a": {"b": [1, 2]}}),  # first, whole object
        ('Use {braces} like {"a": 1}', {"a": 1}),  # a closed non-JSON brace is skipped
        ('{"text": "a } inside", "n": 1}', {"text": "a } inside", "n": 1}),
    ],
)
def test_parse_json_finds_the_first_object(text, expected):
    assert parse_structured(text, "json") == expected


@pytest.mark.parametrize(
    "text",
    [
        "no json here",
        "{'a': 1}",  # single quotes are not JSON
        '{"a": 1,}',  # trailing comma
        '{"a": NaN}',  # NaN is not JSON
        '{"a": 1, "b": {"c": 2}',  # cut off by the token limit: not the inner {"c": 2}
        '{\'a\': 1, "b": {"c": 2}}',  # malformed outer object: not the inner {"c": 2}
        "[1, 2, 3]",  # an array is not an object
        "",
    ],
)
def test_parse_json_rejects_invalid_text(text):
    assert parse_structured(text, "json") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(3, 4)", (3.0, 4.0)),
        ("The point is at [0.25, 0.75].", (0.25, 0.75)),
        ("(-1.5,2e1)", (-1.5, 20.0)),
        ('```json\n{"x": 10, "y": 20.5, "label": "cup"}\n```', (10.0, 20.5)),
        ('{"point": [7, 8]}', (7.0, 8.0)),  # no x/y keys: the bracketed pair inside counts
        ("first (1, 2) then (3, 4)", (1.0, 2.0)),
    ],
)
def test_parse_point(text, expected):
    parsed = parse_structured(text, "point")
    assert parsed == expected
    assert all(isinstance(v, float) for v in parsed)


@pytest.mark.parametrize(
    "text",
    ["no point", "(3, 4]", "(1, 2, 3)", '{"x": "3", "y": 4}', '{"x": true, "y": 4}', "(a, b)"],
)
def test_parse_point_rejects(text):
    assert parse_structured(text, "point") is None


def test_parse_box():
    assert parse_structured("[1, 2, 3, 4]", "box") == (1.0, 2.0, 3.0, 4.0)
    assert parse_structured("Box: (0.1,0.2,0.5,0.9)", "box") == (0.1, 0.2, 0.5, 0.9)
    assert parse_structured('{"x1": 0, "y1": 0, "x2": 2, "y2": 1}', "box") == (0.0, 0.0, 2.0, 1.0)
    assert parse_structured("[1, 1, 1, 5]", "box") == (1.0, 1.0, 1.0, 5.0)  # zero width is still a box
    assert parse_structured("[3, 2, 1, 4]", "box") is None  # x2 < x1
    assert parse_structured("[1, 4, 3, 2]", "box") is None  # y2 < y1
    assert parse_structured("[1, 2, 3]", "box") is None
    assert parse_structured("[3, 2, 1, 4] or maybe [1, 2, 3, 4]", "box") is None  # only the first counts


def test_parse_structured_refuses_an_unknown_format():
    with pytest.raises(ValueError):
        parse_structured("(1, 2)", "polygon")


def test_point_error_is_the_euclidean_distance():
    # (0, 0) to (3, 4): sqrt(9 + 16) = 5
    score = score_structured("(3, 4)", "(0, 0)", "point", tolerance=5.0)
    assert score == StructuredScore(valid=True, error=5.0, correct=True)
    assert score_structured("(3, 4)", (0, 0), "point", tolerance=4.99).correct is False
    assert score_structured("(3, 4)", [0, 0], "point", tolerance=5).correct is True
    assert score_structured("(3, 4)", {"x": 3, "y": 4}, "point", tolerance=0.0) == StructuredScore(True, 0.0, True)


def test_box_error_is_one_minus_iou():
    # Two unit squares, the second shifted right by half: intersection 0.5 x 1 = 0.5,
    # union 1 + 1 - 0.5 = 1.5, IoU = 1/3, error = 2/3.
    score = score_structured("[0.5, 0, 1.5, 1]", [0, 0, 1, 1], "box", tolerance=0.5)
    assert score.valid
    assert score.error == pytest.approx(2 / 3)
    assert not score.correct
    assert score_structured("[0.5, 0, 1.5, 1]", "(0,0,1,1)", "box", tolerance=0.7).correct
    # A 2x2 box containing a 1x1 box: IoU = 1/4.
    assert score_structured("[0, 0, 2, 2]", (0, 0, 1, 1), "box", tolerance=0.0).error == pytest.approx(0.75)
    # Disjoint boxes: IoU 0.
    assert score_structured("[5, 5, 6, 6]", (0, 0, 1, 1), "box", tolerance=1.0).error == pytest.approx(1.0)
    # Identical boxes: error exactly 0, correct even with zero tolerance.
    assert score_structured('{"x1": 0, "y1": 0, "x2": 1, "y2": 1}', "[0, 0, 1, 1]", "box", tolerance=0.0) == (
        StructuredScore(valid=True, error=0.0, correct=True)
    )


def test_zero_area_boxes_agree_only_when_identical():
    # Union 0 makes IoU 0/0; a zero-width box predicted exactly is right, any other is wrong.
    assert score_structured("[1, 1, 1, 5]", (1, 1, 1, 5), "box", tolerance=0.0).error == 0.0
    assert score_structured("[2, 1, 2, 5]", (1, 1, 1, 5), "box", tolerance=0.5).error == 1.0


def test_json_error_is_the_fraction_of_reference_keys_that_differ():
    reference = {"label": "cat", "count": 3, "area": 0.5, "visible": True}
    # count off by 1 (beyond the tolerance 0.1), area off by 0.05 (within), visible missing:
    # 2 of 4 keys differ -> 0.5; the extra key "note" does not count.
    prediction = 'Result: {"label": "cat", "count": 4, "area": 0.55, "note": "x"}'
    score = score_structured(prediction, reference, "json", tolerance=0.1)
    assert score == StructuredScore(valid=True, error=0.5, correct=False)
    exact = '```json\n{"visible": true, "area": 0.5, "count": 3, "label": "cat"}\n```'
    assert score_structured(exact, reference, "json", tolerance=0.0) == StructuredScore(True, 0.0, True)
    # The reference may be a JSON string too.
    assert score_structured(exact, '{"count": 3.04}', "json", tolerance=0.05).correct
    assert not score_structured(exact, '{"count": 3.04}', "json", tolerance=0.01).correct


def test_json_values_compare_by_type():
    # true is not 1, "3" is not 3, and nested values use the same rules.
    assert score_structured('{"a": 1}', {"a": True}, "json", tolerance=0.5).error == 1.0
    assert score_structured('{"a": "3"}', {"a": 3}, "json", tolerance=0.5).error == 1.0
    assert score_structured('{"a": null}', {"a": None}, "json", tolerance=0.0).correct
    assert score_structured('{"a": [1, 2.01]}', {"a": [1, 2]}, "json", tolerance=0.05).correct
    assert not score_structured('{"a": [1, 2, 3]}', {"a": [1, 2]}, "json", tolerance=0.05).correct
    assert score_structured('{"a": {"b": 1, "c": 2}}', {"a": {"b": 1}}, "json", tolerance=0.0).correct
    # An empty reference only asks for a valid object.
    assert score_structured("{}", {}, "json", tolerance=0.0) == StructuredScore(True, 0.0, True)


def test_invalid_predictions_are_reported_not_scored():
    invalid = StructuredScore(valid=False, error=None, correct=False)
    assert score_structured("I cannot tell.", (1, 2), "point", tolerance=100.0) == invalid
    assert score_structured("[3, 2, 1, 4]", (0, 0, 1, 1), "box", tolerance=1.0) == invalid
    assert score_structured("{'a': 1}", {"a": 1}, "json", tolerance=0.0) == invalid


@pytest.mark.parametrize(
    "reference, fmt",
    [("no point", "point"), ((1, 2, 3), "point"), ((3, 0, 1, 1), "box"), ("[1, 2]", "box"), ([1, 2], "json"),
     ("not json", "json"), ((True, 2), "point"), ((math.nan, 2), "point")],
)
def test_unreadable_references_are_the_users_to_fix(reference, fmt):
    with pytest.raises(BackboneSwapError):
        score_structured("(1, 2)", reference, fmt, tolerance=1.0)


def test_score_structured_checks_its_arguments():
    with pytest.raises(ValueError):
        score_structured("(1, 2)", (1, 2), "polygon", tolerance=1.0)
    with pytest.raises(ValueError):
        score_structured("(1, 2)", (1, 2), "point", tolerance=-1.0)
    with pytest.raises(ValueError):
        score_structured("(1, 2)", (1, 2), "point", tolerance=math.inf)


# --------------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------------


def _numpy_softmax(x: list[float]) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64))
    return e / e.sum()


def test_multiple_choice_matches_a_direct_softmax():
    logprobs = [-2.3, -0.7, -1.9, -4.0]
    score = score_multiple_choice(logprobs, answer_index=1)
    expected = _numpy_softmax(logprobs)
    assert len(score.probabilities) == len(logprobs)
    np.testing.assert_allclose(score.probabilities, expected, rtol=1e-12)
    assert score.choice == 1
    assert score.confidence == pytest.approx(expected.max())
    assert score.correct
    assert math.fsum(score.probabilities) == pytest.approx(1.0)
    assert not score_multiple_choice(logprobs, answer_index=0).correct


def test_multiple_choice_is_stable_for_very_negative_log_probs():
    # A direct softmax underflows: exp(-1000) == 0, so it gives 0/0.
    with np.errstate(invalid="ignore"):
        assert np.isnan(_numpy_softmax([-1000.0, -1001.0])).all()
    score = score_multiple_choice([-1000.0, -1001.0], answer_index=0)
    # Shifting by the maximum changes nothing: softmax([0, -1]) = [1, e^-1] / (1 + e^-1).
    e = math.exp(-1.0)
    assert score.probabilities == pytest.approx([1 / (1 + e), e / (1 + e)], rel=1e-12)
    assert score.confidence == pytest.approx(0.7310585786300049)
    assert score.choice == 0 and score.correct


def test_multiple_choice_with_an_impossible_option_and_a_single_option():
    score = score_multiple_choice([-math.inf, -3.0], answer_index=0)
    assert score.probabilities == [0.0, 1.0]
    assert score.choice == 1 and not score.correct
    assert score_multiple_choice([-5.0], 0) == ChoiceScore(choice=0, probabilities=[1.0], confidence=1.0, correct=True)


@pytest.mark.parametrize(
    "logprobs, answer",
    [([], 0), ([-1.0, -2.0], 2), ([-1.0, -2.0], -1), ([-1.0, math.nan], 0), ([-1.0, math.inf], 0),
     ([-math.inf, -math.inf], 0), ([-1.0, -2.0], 1.0), ([-1.0, -2.0], True)],
)
def test_multiple_choice_refuses_bad_input(logprobs, answer):
    with pytest.raises(ValueError):
        score_multiple_choice(logprobs, answer)
