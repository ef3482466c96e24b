"""The plots: PNG bytes drawn with matplotlib's object API, and pyplot never imported by the package."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backbone_swap.verdict.plots import plot_loss

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def history(stages: dict[str, int]) -> list[dict]:
    return [{"stage": stage, "step": step, "loss": 2.0 / step, "lr": 1e-3}
            for stage, steps in stages.items() for step in range(1, steps + 1)]


def test_loss_curve_is_a_png_and_the_same_history_gives_the_same_bytes():
    image = plot_loss(history({"stage1": 5, "stage2": 12}))
    assert image[:8] == PNG and len(image) > 1000
    assert plot_loss(history({"stage1": 5, "stage2": 12})) == image
    assert plot_loss(history({"stage1": 5, "stage2": 13})) != image


def test_loss_curve_draws_odd_stage_names_and_an_empty_history():
    assert plot_loss(history({"cost $x$": 3}))[:8] == PNG  # '$' would start mathtext
    assert plot_loss([])[:8] == PNG


def test_no_module_of_the_package_uses_pyplot_or_switches_the_backend():
    """pyplot's figure registry and ``matplotlib.use`` are process-wide state a library must leave alone."""
    found = []
    for path in sorted((ROOT / "backbone_swap").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"):
                names = ["matplotlib.use"]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.startswith("matplotlib.pyplot") or name in ("matplotlib.use", "pylab")]
    assert found == []


def test_writing_a_loss_curve_and_a_report_leaves_pyplot_unimported(tmp_path):
    """Checked in a fresh process: in this one another test or library may have imported pyplot already."""
    code = textwrap.dedent("""
        import sys
        from pathlib import Path

        sys.path.insert(1, "tests")
        from test_plots import history
        from test_report import build_comparison

        from backbone_swap.training.export import write_loss_curve
        from backbone_swap.verdict.report import write_report

        out = Path(sys.argv[1])
        write_loss_curve(history({"stage1": 4, "stage2": 6}), out)
        write_report(out / "compare", build_comparison())
        assert (out / "loss.png").stat().st_size > 1000 and (out / "compare" / "report.html").is_file()
        print(sorted(name for name in sys.modules if name.startswith(("matplotlib.pyplot", "pylab"))))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_smoothed_curve_is_a_bias_corrected_moving_average():
    from backbone_swap.verdict.plots import smoothed

    # by hand, weight 0.5: averages 0.5*4=2, 0.5*2+0.5*2=2, 0.5*2+0.5*8=5; corrections 1-0.5, 1-0.25, 1-0.125
    assert smoothed([4.0, 2.0, 8.0], weight=0.5) == pytest.approx([4.0, 2.0 / 0.75, 5.0 / 0.875])
    assert smoothed([3.0] * 5) == pytest.approx([3.0] * 5)  # a constant stays itself from the first step


def test_the_training_curves_of_both_sides_plot():
    from backbone_swap.verdict.plots import plot_training

    history = [{"stage": s, "step": k, "loss": 3.0 / k} for s in ("stage1", "stage2") for k in range(1, 6)]
    assert plot_training({"A": history, "B": history[:5]})[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training({"A": history}) != plot_training({"A": history, "B": history})


def test_quantities_are_written_in_the_unit_that_suits_them():
    from backbone_swap.units import fmt_bytes, fmt_duration, fmt_flop

    assert [fmt_bytes(n) for n in (0, 512, 21_500_000, 1.05e9, 3.2e12)] == ["0 B", "512 B", "21.5 MB", "1.05 GB",
                                                                          "3.2 TB"]
    assert [fmt_flop(n) for n in (2.5e9, 7.77e14, 1.2e18)] == ["2.5 GFLOP", "777 TFLOP", "1.2 EFLOP"]
    assert [fmt_duration(s) for s in (0.3, 45, 600, 5400, 3 * 86400)] == ["under a second", "45 seconds",
                                                                         "10 minutes", "1.5 hours", "3 days"]
