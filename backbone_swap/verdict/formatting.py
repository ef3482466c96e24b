"""Numbers as the report, its reasons and the terminal write them: percentages, points, p-values, intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_number(value: Any) -> bool:
    """A finite real number (not a bool, not None, not NaN)."""
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt_pct(value: Any) -> str:
    """A rate as a percentage with one decimal: 0.6425 -> '64.3%'."""
    return f"{100.0 * float(value):.1f}%" if is_number(value) else "n/a"


def fmt_points(value: Any, *, sign: bool = True) -> str:
    """An accuracy difference in percentage points: 0.125 -> '+12.5'."""
    if not is_number(value):
        return "n/a"
    return f"{100.0 * float(value):+.1f}" if sign else f"{100.0 * float(value):.1f}"


def fmt_p(value: Any) -> str:
    """A p-value with at most 3 significant digits, or '<0.001'."""
    if not is_number(value):
        return "n/a"
    p = float(value)
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def fmt_p_clause(value: Any) -> str:
    """'p = 0.0123' or 'p < 0.001', for sentences."""
    text = fmt_p(value)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def fmt_num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if is_number(value) else "n/a"


def as_interval(value: Any) -> tuple[float, float] | None:
    """A [low, high] pair of finite numbers, else None."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        low, high = value
        if is_number(low) and is_number(high):
            return float(low), float(high)
    return None
