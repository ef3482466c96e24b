"""Quantities as a person reads them: bytes, floating-point operations and durations in the unit that suits them,
with three significant digits, so a plan for a tiny model says "21.5 MB" and "40 seconds", not "0.0 GB" and
"9.2e-07 GPU-hours"."""

from __future__ import annotations


def _scaled(value: float, units: tuple[str, ...], step: float) -> str:
    for unit in units[:-1]:
        if abs(value) < step:
            return f"{value:.3g} {unit}"
        value /= step
    return f"{value:.3g} {units[-1]}"


def fmt_bytes(n: float) -> str:
    """``21.5 MB``, ``1.05 GB``: decimal units, as disks and file sizes are sold and shown."""
    return "0 B" if n == 0 else _scaled(float(n), ("B", "KB", "MB", "GB", "TB", "PB"), 1000.0)


def fmt_flop(n: float) -> str:
    """``3.2 TFLOP``: an amount of floating-point operations (not a rate)."""
    return _scaled(float(n), ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"), 1000.0)


def fmt_duration(seconds: float) -> str:
    """``under a second``, ``45 seconds``, ``12 minutes``, ``3.2 hours``, ``5.1 days``."""
    if seconds < 1:
        return "under a second"
    for unit, size, limit in (("seconds", 1, 90), ("minutes", 60, 90 * 60), ("hours", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds / size:.2g} {unit}" if seconds / size < 10 else f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.2g} days"
