"""The decision rule on task statistics computed from real 0/1 correctness vectors.

``verdicts.make_task`` builds every field of a task the way compare.py does, with the functions of
``backbone_swap.verdict.stats``, so each verdict below is reached on realistic numbers (intervals from the paired
bootstrap, p-values from the exact test) rather than on hand-typed ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from verdicts import make_task, outcomes, with_verdict

from backbone_swap.errors import BackboneSwapError
from backbone_swap.verdict.decision import (
    Thresholds,
    capabilities,
    check_expectation,
    format_weights,
    overall_verdict,
    parse_weights,
    task_verdict,
)

# --------------------------------------------------------------------------------------------------
# One task
# --------------------------------------------------------------------------------------------------


def test_clear_significant_gain_is_an_upgrade():
    task = make_task("vqa", *outcomes(90, 10, 40, 60))
    assert task["mcnemar_p"] < 0.001 and task["diff_ci"][0] > 0
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "upgrade"
    assert reasons[0].startswith("B answers 15.0 points more questions correctly")
    assert "McNemar p < 0.001" in reasons[0]
    # calibration and stability are reported with both numbers, without changing the verdict
    calibration = next(r for r in reasons if "calibrated" in r)
    assert calibration.startswith("B is better calibrated")
    assert f"{task['ece_b']:.3f} vs {task['ece_a']:.3f}" in calibration
    assert "do not overlap" in calibration
    assert any(r.startswith("B's hidden states are more stable") for r in reasons)


def test_clear_significant_loss_is_keep():
    task = make_task("ocr", *outcomes(90, 40, 10, 60, seed=1))
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "keep"
    assert "points fewer questions correctly" in reasons[0]


def test_significant_but_tiny_difference_is_no_clear_difference():
    task = make_task("counting", *outcomes(1000, 0, 20, 980, seed=2))
    assert task["mcnemar_p"] < 1e-4 and task["diff_ci"][0] > 0 and task["diff"] < 0.02
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "no clear difference"
    assert any("significant but smaller than the minimum difference of 2.0 points" in r for r in reasons)
    # the same numbers with a smaller --min-gain are an upgrade
    assert task_verdict(task, Thresholds(min_gain=0.005))[0] == "upgrade"


def test_different_questions_without_significance_are_complementary():
    task = make_task("vqa-hard", *outcomes(60, 40, 45, 55, seed=3))
    assert task["mcnemar_p"] > 0.05
    assert task["complementarity"] >= 0.05 and task["jaccard"] < 0.6
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "complementary"
    routed = next(r for r in reasons if "different questions" in r)
    assert "only A 40, only B 45" in routed
    assert "72.5% vs 52.5%" in routed and "neither replaces the other here (route per question" in routed


def test_same_questions_without_significance_is_no_clear_difference():
    task = make_task("colours", *outcomes(120, 8, 10, 62, seed=4), needs="perception")
    assert task["mcnemar_p"] > 0.05 and task["jaccard"] > 0.6
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "no clear difference"
    assert any("not significant" in r for r in reasons)
    assert any(r.startswith("Only A solves 8 questions, only B 10") for r in reasons)


def test_structured_task_only_b_can_do_is_an_upgrade_whatever_the_accuracy():
    a, b = outcomes(1, 2, 3, 94, seed=5)  # both accuracies low, difference not significant
    task = make_task("pointing", a, b, type="structured", needs="format", valid_a=0.0, valid_b=0.7)
    assert task["mcnemar_p"] > 0.05 and task["accuracy_b"] < 0.05
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "upgrade"
    assert reasons[0] == "Only B can do this task at all (valid outputs 0.0% vs 70.0%, A vs B)."
    assert any("parse in the declared format: A 0.0%, B 70.0%" in r for r in reasons)
    # without valid rates the accuracies decide, and they do not differ
    plain = {**task, "type": "short_answer", "valid_rate_a": None, "valid_rate_b": None}
    assert task_verdict(plain, Thresholds())[0] == "no clear difference"
    # and the reverse capability keeps A
    reverse = {**task, "valid_rate_a": 0.7, "valid_rate_b": 0.0}
    assert task_verdict(reverse, Thresholds())[0] == "keep"


def test_capability_thresholds_are_inclusive():
    a, b = outcomes(1, 2, 3, 94, seed=6)
    task = make_task("json", a, b, type="structured", needs="format", valid_a=0.05, valid_b=0.2)
    assert task_verdict(task, Thresholds())[0] == "upgrade"
    assert task_verdict({**task, "valid_rate_a": 0.06}, Thresholds())[0] != "upgrade"
    assert task_verdict({**task, "valid_rate_b": 0.19}, Thresholds())[0] != "upgrade"
    found = capabilities([task, make_task("vqa", *outcomes(90, 10, 40, 60))])
    assert found == [{"name": "json", "who": "B", "measure": "valid outputs", "rate_a": 0.05, "rate_b": 0.2,
                      "type": "structured", "needs": "format"}]


def test_expectations_compare_the_verdict_or_who_alone_can_do_the_task():
    vqa = with_verdict(make_task("vqa", *outcomes(90, 10, 40, 60)))  # B solves 30 more of 200: an upgrade
    assert vqa["verdict"] == "upgrade"
    assert check_expectation(vqa, "upgrade") == {"task": "vqa", "expected": "upgrade", "observed": "upgrade",
                                                 "shown": True}
    assert check_expectation(vqa, "no clear difference")["shown"] is False
    # 0 of 100 valid for A, 20 of 100 for B: B alone can answer in the format (thresholds 5% and 20%)
    a, b = outcomes(1, 2, 3, 94, seed=6)
    pointing = with_verdict(make_task("pointing", a, b, type="structured", needs="format", valid_a=0.0,
                                      valid_b=0.2))
    assert check_expectation(pointing, "only B") == {
        "task": "pointing", "expected": "only B", "observed": "only B (valid outputs A 0.0%, B 20.0%)", "shown": True}
    assert check_expectation(pointing, "only A")["shown"] is False
    weak = {**pointing, "valid_rate_b": 0.19}
    assert check_expectation(weak, "only B") == {
        "task": "pointing", "expected": "only B", "observed": "neither alone (valid outputs A 0.0%, B 19.0%)",
        "shown": False}
    # without valid rates, accuracy decides who can do it: 3% and 4% are both out of reach
    plain = {**pointing, "type": "short_answer", "valid_rate_a": None, "valid_rate_b": None}
    assert check_expectation(plain, "only B")["observed"] == "neither alone (accuracy A 3.0%, B 4.0%)"
    with pytest.raises(ValueError, match="unknown expectation"):
        check_expectation(vqa, "better")


def test_p_below_alpha_with_an_interval_including_zero_is_not_significant():
    # 12 of B's 14 wins are questions about one image: McNemar (blind to that) says p = 0.013, the
    # cluster bootstrap says the interval includes 0. Both must agree for a verdict.
    a, b = outcomes(90, 2, 12, 96)
    clusters = np.arange(a.size)
    clusters[(a == 0) & (b == 1)] = -1
    task = make_task("scenes", a, b, clusters=clusters)
    assert task["mcnemar_p"] < 0.05 and task["diff_ci"][0] < 0 < task["diff_ci"][1] and task["diff"] >= 0.02
    verdict, reasons = task_verdict(task, Thresholds())
    assert verdict == "no clear difference"
    assert any("includes 0, so the difference is not counted as significant" in r for r in reasons)
    # the same questions treated as independent: the interval excludes 0 and it is an upgrade
    assert task_verdict(make_task("scenes", a, b), Thresholds())[0] == "upgrade"


def test_interval_excluding_zero_with_p_above_alpha_is_not_significant():
    task = make_task("vqa", *outcomes(90, 10, 40, 60))
    verdict, reasons = task_verdict({**task, "mcnemar_p": 0.2}, Thresholds())
    assert verdict == "no clear difference"
    assert any("excludes 0 but McNemar p is not below alpha" in r for r in reasons)
    assert task_verdict({**task, "mcnemar_p": math.nan}, Thresholds())[0] == "no clear difference"


def test_missing_probes_and_equal_calibration_are_stated_plainly():
    task = make_task("vqa", *outcomes(90, 10, 40, 60), probes=False)
    task.update(ece_a=0.05, ece_b=0.05)
    _, reasons = task_verdict(task, Thresholds())
    assert not any("CKA" in r for r in reasons)
    assert any(r.startswith("A and B are equally calibrated (ECE 0.050 each)") for r in reasons)
    _, reasons = task_verdict({**task, "cka_a": 0.8}, Thresholds())
    assert "Stability was measured for A only (CKA 0.800)." in reasons


def test_bad_thresholds_are_refused():
    with pytest.raises(BackboneSwapError, match="alpha"):
        Thresholds(alpha=0.0)
    with pytest.raises(BackboneSwapError, match="min_gain"):
        Thresholds(min_gain=2.0)
    with pytest.raises(BackboneSwapError, match="near_zero"):
        Thresholds(near_zero=0.3, capable=0.2)


def test_a_task_without_its_test_statistics_is_a_bug():
    task = make_task("vqa", *outcomes(90, 10, 40, 60))
    del task["mcnemar_p"]
    with pytest.raises(ValueError, match="mcnemar_p"):
        task_verdict(task, Thresholds())


# --------------------------------------------------------------------------------------------------
# All tasks
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_up_one_down() -> list[dict]:
    return [
        with_verdict(make_task("vqa", *outcomes(90, 10, 40, 60), needs="reasoning")),
        with_verdict(make_task("charts", *outcomes(80, 12, 45, 63, seed=7), needs="reasoning")),
        with_verdict(make_task("ocr", *outcomes(90, 40, 10, 60, seed=8), needs="perception")),
    ]


def test_weights_change_the_overall_verdict(two_up_one_down):
    assert [t["verdict"] for t in two_up_one_down] == ["upgrade", "upgrade", "keep"]
    equal = overall_verdict(two_up_one_down, None)
    assert equal["verdict"] == "mixed: route per task"
    assert equal["score"] == pytest.approx(1 / 3)
    assert equal["counts"] == {"upgrade": 2, "keep": 1, "no clear difference": 0, "complementary": 0}
    assert equal["weights"] == {"vqa": 1.0, "charts": 1.0, "ocr": 1.0}
    assert "B is better on: vqa, charts." in equal["reasons"]
    assert "A is better on: ocr." in equal["reasons"]
    assert "reasoning tasks: upgrade on 2 of 2." in equal["reasons"]
    assert "perception tasks: keep on 1 of 1." in equal["reasons"]

    ignored = overall_verdict(two_up_one_down, parse_weights("ocr=0"))
    assert ignored["verdict"] == "upgrade"
    assert ignored["score"] == 1.0
    assert ignored["counts"]["keep"] == 0
    assert "Left out (weight 0): ocr (keep)." in ignored["reasons"]

    # keep needs score <= -0.5 and no weighted upgrade
    assert overall_verdict(two_up_one_down, {"vqa": 0, "charts": 0})["verdict"] == "keep"


def test_overall_no_clear_difference_and_complementary():
    same = [
        with_verdict(make_task("colours", *outcomes(120, 8, 10, 62, seed=4), needs="perception")),
        with_verdict(make_task("shapes", *outcomes(110, 9, 8, 73, seed=9), needs="perception")),
    ]
    result = overall_verdict(same, None)
    assert result["verdict"] == "no clear difference"
    assert "perception tasks: no clear difference on 2 of 2." in result["reasons"]
    different = same + [with_verdict(make_task("vqa-hard", *outcomes(60, 40, 45, 55, seed=3)))]
    assert overall_verdict(different, None)["verdict"] == "mixed: route per task"
    assert overall_verdict(different, {"vqa-hard": 0})["verdict"] == "no clear difference"


def test_one_upgrade_among_no_differences_is_not_enough():
    tasks = [
        with_verdict(make_task("vqa", *outcomes(90, 10, 40, 60))),
        with_verdict(make_task("colours", *outcomes(120, 8, 10, 62, seed=4))),
        with_verdict(make_task("shapes", *outcomes(110, 9, 8, 73, seed=9))),
    ]
    assert overall_verdict(tasks, None)["verdict"] == "no clear difference"
    assert overall_verdict(tasks, {"vqa": 2})["verdict"] == "upgrade"  # score exactly 0.5


def test_overall_names_what_only_one_model_can_do():
    a, b = outcomes(1, 2, 3, 94, seed=5)
    tasks = [with_verdict(make_task("pointing", a, b, type="structured", needs="format", valid_a=0.0,
                                    valid_b=0.7))]
    result = overall_verdict(tasks, None)
    assert result["verdict"] == "upgrade"
    assert "Only B can do pointing at all (valid outputs 0.0% vs 70.0%, A vs B)." in result["reasons"]


def test_unknown_task_and_negative_weights_are_refused(two_up_one_down):
    with pytest.raises(BackboneSwapError) as caught:
        overall_verdict(two_up_one_down, {"vqaa": 2.0})
    assert "'vqaa'" in str(caught.value) and "vqa, charts, ocr" in str(caught.value)
    with pytest.raises(BackboneSwapError, match="negative"):
        overall_verdict(two_up_one_down, {"vqa": -1.0})
    with pytest.raises(BackboneSwapError, match="weight 0"):
        overall_verdict(two_up_one_down, {"vqa": 0, "charts": 0, "ocr": 0})
    with pytest.raises(BackboneSwapError, match="twice"):
        overall_verdict(two_up_one_down + two_up_one_down[:1], None)


@pytest.mark.parametrize("text, bad", [
    ("vqa", "'vqa'"),
    ("vqa=", "'vqa='"),
    ("=2", "'=2'"),
    ("vqa=two", "'two'"),
    ("vqa=1,,ocr=2", "empty item"),
    ("vqa=-1", "'vqa=-1'"),
    ("vqa=nan", "'vqa=nan'"),
    ("vqa=1,vqa=2", "'vqa' twice"),
])
def test_malformed_weights_name_the_bad_item(text, bad):
    with pytest.raises(BackboneSwapError) as caught:
        parse_weights(text)
    assert bad in str(caught.value)


def test_parse_weights_round_trip():
    assert parse_weights(None) is None
    assert parse_weights("  ") is None
    assert parse_weights(" vqa = 2 , ocr=0.5,a=b=0") == {"vqa": 2.0, "ocr": 0.5, "a=b": 0.0}
    weights = {"vqa": 2.0, "ocr": 0.1, "charts": 1 / 3, "pointing": 0.0}
    assert parse_weights(format_weights(weights)) == weights
    text = "vqa=2.0,ocr=0.5"
    assert format_weights(parse_weights(text)) == text


@pytest.mark.parametrize(("update", "starts", "words"), [
    ({"ece_a": 0.20, "ece_b": 0.10, "ece_a_ci": [0.08, 0.30], "ece_b_ci": [0.05, 0.15]},
     "No clear difference in calibration", "the gap is within their intervals"),
    ({"ece_a": 0.104, "ece_b": 0.100, "ece_a_ci": [0.103, 0.105], "ece_b_ci": [0.099, 0.101]},
     "No clear difference in calibration", "shows only in the third decimal"),
    ({"ece_a": 0.20, "ece_b": 0.10, "ece_a_ci": [0.18, 0.22], "ece_b_ci": [0.08, 0.12], "brier_a": 0.15,
      "brier_b": 0.25}, "ECE and Brier disagree on which model is better calibrated", "Brier favours A"),
    ({"ece_a": 0.20, "ece_b": 0.10, "ece_a_ci": [0.18, 0.22], "ece_b_ci": [0.08, 0.12], "brier_a": 0.25,
      "brier_b": 0.15}, "B is better calibrated", "Brier A 0.250, B 0.150"),
])
def test_calibration_names_a_winner_only_where_the_evidence_does(update, starts, words):
    task = {**make_task("vqa", *outcomes(90, 10, 40, 60)), **update}
    sentence = next(r for r in task_verdict(task, Thresholds())[1] if "calibrat" in r)
    assert sentence.startswith(starts) and words in sentence, sentence


def test_stability_names_no_winner_inside_the_third_decimal():
    task = {**make_task("vqa", *outcomes(90, 10, 40, 60)), "cka_a": 0.912, "cka_b": 0.915}
    sentence = next(r for r in task_verdict(task, Thresholds())[1] if "CKA" in r)
    assert sentence == ("No clear difference in stability under perturbed inputs: CKA A 0.912, B 0.915; the gap "
                        "shows only in the third decimal.")


def test_a_task_most_questions_of_which_neither_model_solves_is_flagged():
    from backbone_swap.verdict.decision import both_poor

    poor = make_task("fruit", *outcomes(2, 1, 7, 38))  # 38 of 48 solved by neither: 79.2%
    verdict, reasons = task_verdict(poor, Thresholds())
    assert both_poor(poor) and reasons[1] == ("Both models are poor here: 38 of 48 questions (79.2%) are solved by "
                                              "neither, whatever the verdict says about the difference between them.")
    fine = make_task("vqa", *outcomes(90, 10, 40, 60))  # 60 of 200: 30%
    assert not both_poor(fine) and not any("poor" in r for r in task_verdict(fine, Thresholds())[1])
    assert not both_poor({**poor, "overlap": {**poor["overlap"], "neither": 24}})  # exactly half is not most
