"""Writing the comparison: report.json against its schema, markdown, self-contained HTML, plots, terminal table."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from verdicts import make_task, outcomes, with_verdict

from backbone_swap.verdict.decision import Thresholds, capabilities, check_expectation, overall_verdict
from backbone_swap.verdict.plots import plot_accuracy, plot_reliability
from backbone_swap.verdict.report import (
    render_markdown,
    terminal_table,
    to_jsonable,
    write_report,
)
from backbone_swap.verdict.schema import REPORT_SCHEMA, validate_report

SCRIPT = "<script>alert(1)</script>"
FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html", "accuracy": "accuracy.png",
         "overlap": "overlap.png", "reliability": "reliability.png"}


def build_comparison(names: tuple[str, str, str] = ("vqa", "ocr", "pointing")) -> dict:
    """Three tasks (an upgrade, a keep, a structured task only B can do) and everything around them."""
    a, b = outcomes(1, 2, 3, 94, seed=5)
    tasks = [
        with_verdict(make_task(names[0], *outcomes(90, 10, 40, 60), needs="reasoning")),
        with_verdict(make_task(names[1], *outcomes(90, 40, 10, 60, seed=1), needs="perception")),
        with_verdict(make_task(names[2], a, b, type="structured", needs="format", valid_a=0.0, valid_b=0.7)),
    ]
    # numpy scalars, as compare.py may well hand over
    tasks[0]["accuracy_a"] = np.float64(tasks[0]["accuracy_a"])
    tasks[0]["n"] = np.int64(tasks[0]["n"])
    tasks[0]["diff_ci"] = np.array(tasks[0]["diff_ci"])
    return {
        "meta": {"model_a": "llava-old", "model_b": "llava-new", "suite": "demo", "baseline": "retrain",
                 "alpha": 0.05, "min_gain": 0.02, "n_resamples": 999, "seed": 0,
                 "created": "2025-01-02T03:04:05+00:00"},
        "tasks": tasks,
        "overall": overall_verdict(tasks, None),
        "capabilities": capabilities(tasks, Thresholds()),
        "warnings": ["B was trained on 3 epochs, A on 1: the recipe differs, not only the backbone"],
        "expectations": [check_expectation(tasks[1], "no clear difference"), check_expectation(tasks[2], "only B")],
    }


@pytest.fixture(scope="module")
def comparison() -> dict:
    return build_comparison((SCRIPT, "ocr", "pointing"))


@pytest.fixture(scope="module")
def plain() -> dict:
    return build_comparison()


@pytest.fixture(scope="module")
def written(comparison, tmp_path_factory) -> dict[str, Path]:
    return write_report(tmp_path_factory.mktemp("report") / "compare", comparison)


def test_every_file_is_written_and_nothing_else(written):
    assert {key: path.name for key, path in written.items()} == FILES
    folder = written["json"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES.values())  # no temporary files left


def test_report_json_is_the_comparison_and_matches_the_schema(written, comparison):
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(to_jsonable(comparison)))
    assert data["tasks"][0]["n"] == 200
    assert data["tasks"][0]["diff_ci"] == [float(v) for v in comparison["tasks"][0]["diff_ci"]]
    assert validate_report(data) == []
    assert set(REPORT_SCHEMA["report"]) == set(data)
    assert set(REPORT_SCHEMA["task"]) <= set(data["tasks"][2])


@pytest.mark.parametrize("damage, problem", [
    (lambda d: d.pop("warnings"), "warnings: missing"),
    (lambda d: d["meta"].pop("seed"), "meta.seed: missing"),
    (lambda d: d["tasks"][1].pop("mcnemar_p"), "tasks[1].mcnemar_p: missing"),
    (lambda d: d["tasks"][0].update(n="200"), "tasks[0].n: expected integer, got string"),
    (lambda d: d["tasks"][0].update(accuracy_a="65%"), "tasks[0].accuracy_a: expected number|null, got string"),
    (lambda d: d["tasks"][0].update(verdict="maybe"), "tasks[0].verdict: 'maybe' is not one of"),
    (lambda d: d["tasks"][0]["overlap"].update(both=1), "tasks[0].overlap: both + only_a + only_b + neither"),
    (lambda d: d["tasks"][0].update(diff_ci=[0.2, 0.1]), "tasks[0].diff_ci: low 0.2 is above high 0.1"),
    (lambda d: d["tasks"][2]["reliability_b"][0].update(count=1.5), "tasks[2].reliability_b[0].count"),
    (lambda d: d["tasks"][1].update(name=d["tasks"][0]["name"]), "appears more than once"),
    (lambda d: d["overall"].update(score=None), "overall.score: expected number, got null"),
    (lambda d: d["meta"].update(created="yesterday"), "meta.created: 'yesterday' is not an ISO 8601"),
    (lambda d: d["capabilities"][0].update(name="nope"), "capabilities[0].name: 'nope' is not a task"),
    (lambda d: d.update(warnings="none"), "warnings: expected list[string], got string"),
    (lambda d: d["expectations"][0].update(shown="yes"), "expectations[0].shown: expected boolean, got string"),
    (lambda d: d["expectations"][0].update(task="nope"), "expectations[0].task: 'nope' is not a task"),
    (lambda d: d["expectations"][0].update(expected="better"), "expectations[0].expected: 'better' is not one of"),
])
def test_validate_report_finds_missing_keys_and_wrong_types(written, damage, problem):
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    damage(data)
    problems = validate_report(data)
    assert any(problem in p for p in problems), problems
    assert validate_report([]) == ["report: expected object (report), got list"]


def test_markdown_leads_with_the_verdict_and_shows_warnings_table_and_capabilities(written, comparison):
    text = written["markdown"].read_text(encoding="utf-8")
    assert text.startswith("# Backbone swap: llava-old -> llava-new\n")
    verdict = f"## Verdict: **{comparison['overall']['verdict']}**"
    assert verdict in text
    assert text.index(verdict) < text.index("Warnings") < text.index("## Per task")
    assert "> - B was trained on 3 epochs, A on 1" in text
    for name in ("ocr", "pointing", r"\<script>alert(1)\</script>"):
        assert f"| {name} |" in text and f"### {name}: " in text
    assert SCRIPT not in text
    row = next(line for line in text.splitlines() if line.startswith("| pointing |"))
    assert "| 3.0% | 4.0% | 0.0% / 70.0% |" in row and row.endswith("| upgrade |")
    ocr = next(line for line in text.splitlines() if line.startswith("| ocr |"))
    assert "| -15.0 [" in ocr and "| <0.001 | 40 / 10 |" in ocr
    assert "- pointing: only B can do it (valid outputs A 0.0%, B 70.0%)" in text
    for image in ("accuracy.png", "overlap.png", "reliability.png"):
        assert f"]({image})" in text


def test_expected_findings_are_reported_whether_shown_or_not(written):
    """The ocr task was expected to show no clear difference but B is worse: the report must say so."""
    text = written["markdown"].read_text(encoding="utf-8")
    assert "## Expected findings: 1 of 2 shown by this run" in text
    assert text.index("Warnings") < text.index("## Expected findings") < text.index("## Per task")
    assert "- ocr: expected no clear difference, observed keep: NOT shown" in text
    assert "- pointing: expected only B, observed only B (valid outputs A 0.0%, B 70.0%): shown" in text
    html = written["html"].read_text(encoding="utf-8")
    assert "Expected findings: 1 of 2 shown by this run" in html
    assert "<li>ocr: expected no clear difference, observed keep: NOT shown</li>" in html


def test_html_is_self_contained_and_escapes_user_text(written):
    html = written["html"].read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'src="(?!data:)', html)  # nothing fetched from anywhere
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "B was trained on 3 epochs" in html
    assert "only B can do it (valid outputs A 0.0%, B 70.0%)" in html


def test_plots_are_png_files_of_some_substance(written):
    for key in ("accuracy", "overlap", "reliability"):
        data = written[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 1024


def test_nan_becomes_null_and_n_a(tmp_path, plain):
    comparison = copy.deepcopy(plain)
    comparison["tasks"][1]["mcnemar_p"] = float("nan")
    comparison["tasks"][1]["phi"] = np.float32("nan")
    comparison["tasks"][2]["ece_b"] = math.inf
    paths = write_report(tmp_path, comparison)
    raw = paths["json"].read_text(encoding="utf-8")
    assert "NaN" not in raw and "Infinity" not in raw
    data = json.loads(raw)
    assert data["tasks"][1]["mcnemar_p"] is None and data["tasks"][1]["phi"] is None
    assert data["tasks"][2]["ece_b"] is None
    assert validate_report(data) == []
    ocr = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ocr |"))
    assert "| n/a |" in ocr


def test_an_invalid_comparison_writes_nothing(tmp_path, plain):
    comparison = copy.deepcopy(plain)
    del comparison["tasks"][0]["overlap"]
    with pytest.raises(ValueError, match=r"tasks\[0\]\.overlap: missing"):
        write_report(tmp_path / "out", comparison)
    assert not any((tmp_path / "out").iterdir())


def test_rewriting_replaces_the_files(tmp_path, plain):
    comparison = copy.deepcopy(plain)
    write_report(tmp_path, comparison)
    comparison["warnings"] = []
    paths = write_report(tmp_path, comparison)
    assert "none were detected" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["warnings"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES.values())


def test_many_tasks_and_odd_names_still_plot(plain):
    tasks = []
    for i in range(5):
        task = copy.deepcopy(plain["tasks"][i % 3])
        task["name"] = f"task $x_{i}$ with a rather long name number {i}"  # '$' would start mathtext
        tasks.append(task)
    tasks[4]["reliability_a"] = tasks[4]["reliability_b"] = []
    comparison = to_jsonable({**plain, "tasks": tasks, "overall": overall_verdict(tasks, None), "capabilities": [],
                                   "expectations": []})
    assert validate_report(comparison) == []
    for plot in (plot_accuracy, plot_reliability):
        assert plot(comparison)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "None: every task is within reach" in render_markdown(comparison)


def test_terminal_table_shows_the_short_form_without_reading_markup(comparison):
    data = to_jsonable(comparison)
    data["tasks"][1]["name"] = "[bold red]ocr[/]"
    console = Console(record=True, width=140, color_system=None)
    console.print(terminal_table(data))
    out = console.export_text()
    assert "llava-old -> llava-new: " + data["overall"]["verdict"] in out
    assert "[bold red]ocr[/]" in out and SCRIPT in out
    for cell in ("65.0%", "+15.0", "<0.001", "upgrade", "keep"):
        assert cell in out


@pytest.mark.parametrize("created", ["2025-01-02T03:04:05+0000", "2025-01-02T03:04:05Z", "2025-01-02T03:04:05.5"])
def test_created_may_be_written_by_strftime_or_isoformat(written, created):
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    data["meta"]["created"] = created
    assert validate_report(data) == []


def test_report_files_are_as_readable_as_any_file_the_user_makes(tmp_path, plain):
    import os

    previous = os.umask(0o022)
    try:
        paths = write_report(tmp_path, copy.deepcopy(plain))
    finally:
        os.umask(previous)
    for path in paths.values():
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_the_templates_are_package_data():
    """The markdown and the HTML are rendered from template files: one that no pattern matches is not installed."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "backbone_swap.verdict"]
    package = root / "backbone_swap" / "verdict"
    templates = [p.relative_to(package).as_posix() for p in (package / "templates").rglob("*") if p.is_file()]
    assert {"templates/report.html.j2", "templates/report.md.j2"} <= set(templates)
    assert [t for t in templates if not any(fnmatch.fnmatch(t, pattern) for pattern in patterns)] == []


def test_a_benchmarks_own_metrics_solved_rule_and_undefined_kappa_are_shown(tmp_path, plain):
    """tasks[].official as a metric / A / B table (rates in percent, MME's summed score as points), the rule that
    says when a question counts as solved, and a kappa that is undefined, in both documents, escaped."""
    from verdicts import make_task

    comparison = copy.deepcopy(plain)
    comparison["tasks"][0]["official"] = {"accuracy": {"a": 0.8125, "b": 0.875},
                                          "perception": {"a": 1510.72, "b": None}, SCRIPT: {"a": 0.5, "b": 0.25}}
    comparison["tasks"][0]["solved_when"] = "its VQA accuracy is 1 <b>"
    constant = with_verdict(make_task("constant", *outcomes(12, 0, 0, 0)))  # both right on every question
    assert math.isnan(constant["kappa"])
    comparison["tasks"].append(constant)
    comparison["overall"] = overall_verdict(comparison["tasks"], None)
    paths = write_report(tmp_path, comparison)
    assert json.loads(paths["json"].read_text())["tasks"][3]["kappa"] is None
    text = paths["markdown"].read_text(encoding="utf-8")
    section = text[text.index("### vqa: "):text.index("### ocr: ")]
    assert "Solved when its VQA accuracy is 1 \\<b>." in section
    assert "| metric | A | B |" in section
    assert "| accuracy | 81.2% | 87.5% |" in section
    assert "| perception | 1510.7 | n/a |" in section
    assert "| \\<script>alert(1)\\</script> | 50.0% | 25.0% |" in section
    assert "agreement beyond chance (Cohen's kappa) n/a" in text[text.index("### constant: "):]
    html = paths["html"].read_text(encoding="utf-8")
    assert "<tr><td>accuracy</td><td>81.2%</td><td>87.5%</td></tr>" in html
    assert "<tr><td>perception</td><td>1510.7</td><td>n/a</td></tr>" in html
    assert "Solved when its VQA accuracy is 1 &lt;b&gt;." in html and SCRIPT not in html


def test_a_task_both_models_fail_says_so_in_its_heading(tmp_path, plain):
    comparison = copy.deepcopy(plain)
    comparison["tasks"][2]["both_poor"] = True
    paths = write_report(tmp_path, comparison)
    assert "### pointing: upgrade (both models poor)" in paths["markdown"].read_text()
    assert "### ocr: keep\n" in paths["markdown"].read_text()
    assert "</span> (both models poor)</h3>" in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["tasks"][2]["both_poor"] is True
